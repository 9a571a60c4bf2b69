#!/usr/bin/env bash
# Reproduce the accuracy-vs-K table of docs/algorithms.md: bit-flip training on Fashion-MNIST
# (784-512-10, default hyperparameters, seed 0) for each weight encoding and state budget,
# beside the float32 baseline. About a minute per row on two cores.
# Usage: scripts/accuracy-vs-state-bits.sh [SEED]    (needs `make setup` first)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}
bitfleet=.venv/bin/bitfleet
rows=("binary 1" "binary 2" "binary 4" "binary 5" "binary 6" "binary 8" "binary 12" "ternary 2" "ternary 5" "ternary 8")
printf '%-8s %3s %8s %8s %8s %6s %8s\n' weights K test val train epoch seconds
report() {
  python3 -c 'import json,sys; d=json.load(sys.stdin); print("%-8s %3s %8.4f %8.4f %8.4f %6d %8.1f" % (
      d["weights"], d["state_bits"], d["test_accuracy"], d["val_accuracy"], d["train_accuracy"],
      d["best_epoch"], d["train_seconds"]))'
}
for row in "${rows[@]}"; do
  set -- $row
  $bitfleet train --dataset fashion-mnist --weights "$1" --state-bits "$2" --seed "$seed" --json | report
done
$bitfleet train --algo float --dataset fashion-mnist --seed "$seed" --json | report
