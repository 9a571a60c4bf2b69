#!/usr/bin/env bash
# The agent's footprint: peak RSS and speed of one local round of a binary 784-512-10
# network on 10,000 local samples (a 1/6 partition of Fashion-MNIST, as an agent holds it),
# with numba and with the numpy kernels only. Needs `make setup` first.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/bitfleet data partition --dataset fashion-mnist --agents 6 --scheme iid --seed 0 \
    --out "$work" --json > /dev/null
echo "with numba:    $(.venv/bin/bitfleet-agent selftest --data "$work/agent-0.npz" --json)"
echo "without numba: $(BITFLEET_NO_NUMBA=1 .venv/bin/bitfleet-agent selftest --data "$work/agent-0.npz" --json)"
