#!/usr/bin/env bash
# Install the Debian packages bitfleet needs: the Mosquitto broker (tests, demo cluster), the
# offline Fashion-MNIST data set, venv, shellcheck (the tests lint the shell scripts), and
# the PostgreSQL server (the tests start throwaway servers of their own with its binaries,
# from /usr/lib/postgresql/*/bin; the cluster Debian's package may start is not used), and
# gcc-multilib (the tests compile exported C models for 32-bit x86 too), and chromium (the
# dashboard's tests drive it headless).
# Idempotent: does nothing when all are present.
set -euo pipefail

packages=(mosquitto dataset-fashion-mnist python3-venv shellcheck postgresql gcc-multilib chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install ${missing[*]} as root (apt-get install)" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
