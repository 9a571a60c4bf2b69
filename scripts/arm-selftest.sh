#!/usr/bin/env bash
# The Raspberry Pi install, run on ARM under emulation: for each architecture, a fresh Debian
# bookworm root filesystem (debootstrap, minbase: no compiler), in it edge_agent/install/install.sh
# --no-service with this repository's wheel, then `bitfleet-agent selftest` on a Fashion-MNIST
# partition. qemu-user-static runs the ARM binaries through binfmt_misc. Run by hand, as root,
# on a Debian or Ubuntu amd64 machine (too slow for CI); docs/raspberry-pi.md has the results.
#
#   sudo scripts/arm-selftest.sh                  # arm64 and armhf
#   sudo scripts/arm-selftest.sh --arch armhf --keep
set -Eeuo pipefail

readonly PROG=${0##*/}
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
readonly SUITE=bookworm # its python3-numpy (1.24) is the floor pyproject.toml declares
readonly ALL_ARCHES=(arm64 armhf)
readonly PREFIX=/opt/bitfleet-agent # install.sh's default
readonly GUEST_DIR=/root/bitfleet   # where the wheel, the installer and the data go in the guest
readonly LOCAL_CAS=/usr/local/share/ca-certificates # the host's own CAs, copied into the guest

readonly EXIT_FAILED=1 # a test failed on some architecture (the summary says which step)
readonly EXIT_USAGE=2
readonly EXIT_SYSTEM=3 # not root, no apt-get, or the emulation cannot be set up here

usage() {
  cat <<EOF
Usage: sudo $PROG [--arch ARCH]... [--workdir DIR] [--wheel FILE] [--data FILE] [options]

For each ARCH (default: ${ALL_ARCHES[*]}): debootstrap Debian $SUITE into DIR/rootfs-ARCH,
check it has no compiler, run edge_agent/install/install.sh --no-service --wheel FILE in it
(as on a board: apt-get, a virtualenv, pip; on armhf numpy is Debian's python3-numpy), check
there is still no compiler, then run bitfleet-agent selftest (on arm64 with numba and with the
numpy kernels). Prints a summary and writes DIR/results.json. Takes about 10 minutes.

  --arch ARCH     arm64 or armhf; repeat for both (default: both)
  --workdir DIR   root filesystems, logs and results (default: /var/tmp/bitfleet-arm-selftest);
                  must be outside the repository
  --wheel FILE    the bitfleet wheel to install (default: build one from this checkout with
                  .venv/bin/python -m build)
  --data FILE     the selftest's data (default: agent-0.npz of a 6-way partition of
                  Fashion-MNIST, made with .venv/bin/bitfleet data partition)
  --samples N     selftest samples (default: 10000)
  --mirror URL    Debian mirror (default: http://deb.debian.org/debian)
  --keep          keep the root filesystems (chroot DIR/rootfs-ARCH to look around)
  -h, --help      show this help

Needs root, apt-get (it installs debootstrap, qemu-user-static and binfmt-support), network
access to the mirror and to PyPI, and about 1 GB in DIR per architecture while it runs. The
CAs this host adds in $LOCAL_CAS are added in the guests too (a TLS proxy to PyPI).
Exit codes: 0 all passed, $EXIT_FAILED a step failed, $EXIT_USAGE usage error, $EXIT_SYSTEM unsuitable system.
EOF
}

die() {
  local code=$1
  shift
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit "$code"
}

usage_error() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  printf "Try '%s --help'.\n" "$PROG" >&2
  exit "$EXIT_USAGE"
}

trap 'die "$EXIT_FAILED" "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

step() { printf '==> %s\n' "$*"; }

abspath() { printf '%s/%s\n' "$(cd -- "$(dirname -- "$1")" && pwd -P)" "$(basename -- "$1")"; }

# --- options --------------------------------------------------------------------------------

ARCHES=() WORKDIR=/var/tmp/bitfleet-arm-selftest WHEEL='' DATA='' SAMPLES=10000
MIRROR=http://deb.debian.org/debian KEEP=no

parse_args() {
  local opt value
  while (($# > 0)); do
    opt=$1
    shift
    case $opt in
      --arch | --workdir | --wheel | --data | --samples | --mirror)
        [[ $# -gt 0 && -n $1 && $1 != --* ]] || usage_error "$opt needs a value"
        value=$1
        shift
        case $opt in
          --arch) ARCHES+=("$value") ;;
          --workdir) WORKDIR=$value ;;
          --wheel) WHEEL=$value ;;
          --data) DATA=$value ;;
          --samples) SAMPLES=$value ;;
          --mirror) MIRROR=$value ;;
        esac
        ;;
      --keep) KEEP=yes ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) usage_error "unknown option: $opt" ;;
    esac
  done
}

validate() {
  local arch
  ((${#ARCHES[@]} > 0)) || ARCHES=("${ALL_ARCHES[@]}")
  for arch in "${ARCHES[@]}"; do
    [[ $arch == arm64 || $arch == armhf ]] || usage_error "--arch must be arm64 or armhf, got '$arch'"
  done
  [[ $SAMPLES =~ ^[1-9][0-9]{0,6}$ ]] ||
    usage_error "--samples must be a whole number from 1 to 9999999, got '$SAMPLES'"
  [[ $MIRROR =~ ^https?://[^[:space:]]+$ ]] || usage_error "--mirror must be an http(s):// URL"
  if [[ -n $WHEEL ]]; then
    [[ -f $WHEEL && $WHEEL == *.whl ]] || usage_error "--wheel $WHEEL: no such wheel (.whl) file"
    WHEEL=$(abspath "$WHEEL")
  fi
  if [[ -n $DATA ]]; then
    [[ -f $DATA ]] || usage_error "--data $DATA: no such file"
    DATA=$(abspath "$DATA")
  fi
  [[ $WORKDIR == /* ]] || usage_error "--workdir must be an absolute path, got '$WORKDIR'"
  WORKDIR=${WORKDIR%/}
  [[ $WORKDIR/ != "$REPO"/* ]] ||
    usage_error "--workdir $WORKDIR is inside the repository: root filesystems stay outside it"
}

# --- the host -------------------------------------------------------------------------------

install_host_packages() {
  local packages=(debootstrap qemu-user-static binfmt-support) missing=() package
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  ((${#missing[@]} == 0)) && return 0
  step "host packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# qemu-user-static's binfmt_misc entry for a Debian architecture, enabled, with the F flag
# (the kernel opens the emulator when it is registered, so it need not be in the chroot).
enable_binfmt() {
  local name entry=/proc/sys/fs/binfmt_misc
  case $1 in arm64) name=qemu-aarch64 ;; armhf) name=qemu-arm ;; esac
  if [[ ! -e $entry/status ]]; then
    mount -t binfmt_misc binfmt_misc "$entry" ||
      die "$EXIT_SYSTEM" "blocked: cannot mount binfmt_misc on $entry (a container without it?)"
  fi
  [[ -e $entry/$name ]] || update-binfmts --enable "$name" ||
    die "$EXIT_SYSTEM" "blocked: update-binfmts --enable $name failed"
  grep -qx enabled "$entry/$name" || die "$EXIT_SYSTEM" "blocked: $entry/$name is disabled"
  grep -q '^flags: .*F' "$entry/$name" ||
    die "$EXIT_SYSTEM" "blocked: $entry/$name lacks the F flag (qemu would be needed in the chroot)"
}

# Built from a copy of the checkout: setuptools writes build/ and *.egg-info into the tree it
# builds, which here others may be building or type-checking in at the same time.
build_wheel() {
  [[ -x $REPO/.venv/bin/python ]] || die "$EXIT_SYSTEM" "no $REPO/.venv: run make setup, or pass --wheel"
  step "wheel from $REPO"
  rm -rf "$WORKDIR/wheel" "$WORKDIR/source"
  mkdir -p "$WORKDIR/source"
  cp -R "$REPO"/{pyproject.toml,README.md,LICENSE,shared,server,edge_agent} "$WORKDIR/source/"
  "$REPO/.venv/bin/python" -m build --wheel --no-isolation --outdir "$WORKDIR/wheel" \
    "$WORKDIR/source" >"$WORKDIR/wheel.log" 2>&1 ||
    die "$EXIT_FAILED" "building the wheel failed: see $WORKDIR/wheel.log"
  local wheels=("$WORKDIR"/wheel/bitfleet-*.whl)
  WHEEL=${wheels[0]}
}

make_data() {
  [[ -x $REPO/.venv/bin/bitfleet ]] || die "$EXIT_SYSTEM" "no $REPO/.venv: run make setup, or pass --data"
  step "data: 1/6 of Fashion-MNIST"
  rm -rf "$WORKDIR/data"
  "$REPO/.venv/bin/bitfleet" data partition --dataset fashion-mnist --agents 6 --scheme iid \
    --seed 0 --out "$WORKDIR/data" --json >"$WORKDIR/data.log" 2>&1 ||
    die "$EXIT_FAILED" "making the data failed: see $WORKDIR/data.log"
  DATA=$WORKDIR/data/agent-0.npz
}

# --- one architecture -----------------------------------------------------------------------

MOUNTED=() # mount points to undo, innermost last

unmount_all() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount "${MOUNTED[i]}" || true; done
  MOUNTED=()
}
trap unmount_all EXIT

# Delete a root filesystem, never what is mounted into it (its /dev is the host's).
remove_rootfs() {
  [[ -e $1 ]] || return 0
  if grep -q " $1/" /proc/self/mountinfo; then
    die "$EXIT_SYSTEM" "something is still mounted under $1: umount it first"
  fi
  rm -rf --one-file-system "$1"
}

in_guest() {
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"
}

# Run one step, its output in DIR/ARCH-NAME.log; on failure mark the architecture failed.
# Sets SECONDS_TAKEN.
timed() {
  local name=$1 started
  shift
  started=$EPOCHREALTIME
  if "$@" >"$WORKDIR/$ARCH-$name.log" 2>&1; then
    SECONDS_TAKEN=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
    return 0
  fi
  FAILED_STEP=$name
  printf '%s: %s failed on %s; the end of %s:\n' "$PROG" "$name" "$ARCH" "$WORKDIR/$ARCH-$name.log" >&2
  tail -n 20 "$WORKDIR/$ARCH-$name.log" >&2
  return 1
}

no_compiler() {
  local found
  found=$(in_guest sh -c 'command -v gcc; command -v cc; command -v c++; true')
  [[ -z $found ]] || {
    echo "a compiler is in the root filesystem: $found"
    return 1
  }
  echo "no gcc, cc or c++"
}

# install.sh as a board runs it, less what needs systemd. It is copied alone (no checkout
# around it), so it installs only what --wheel names. The host's own CAs go along: the guest's
# ca-certificates (which install.sh's apt-get brings) adds them, so that pip reaches PyPI
# through a TLS-inspecting proxy this host trusts.
install_agent() {
  mkdir -p "$ROOTFS$GUEST_DIR" "$ROOTFS$LOCAL_CAS"
  cp "$REPO/edge_agent/install/install.sh" "$WHEEL" "$DATA" "$ROOTFS$GUEST_DIR/"
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  if [[ -d $LOCAL_CAS ]]; then cp -R "$LOCAL_CAS/." "$ROOTFS$LOCAL_CAS/"; fi
  in_guest bash "$GUEST_DIR/install.sh" --no-service --wheel "$GUEST_DIR/${WHEEL##*/}"
}

# Which numpy the virtualenv imports: on armhf it must be Debian's, as the installer plans.
numpy_origin() {
  local origin
  origin=$(in_guest "$PREFIX/bin/python" -c 'import numpy; print(numpy.__version__, numpy.__file__)')
  echo "$origin"
  [[ $ARCH != armhf || $origin == *" /usr/lib/python3/dist-packages/"* ]] || {
    echo "armhf must use Debian's python3-numpy"
    return 1
  }
}

selftest() {
  in_guest "$@" "$PREFIX/bin/bitfleet-agent" selftest --data "$GUEST_DIR/${DATA##*/}" \
    --samples "$SAMPLES" --json
}

# One JSON object for the summary: the step times and the selftest's own report.
record() {
  local kernels=$1 report=${2:-null}
  RESULTS+=("$(printf '{"arch": "%s", "kernels": "%s", "passed": %s, "failed_step": "%s", "debootstrap_seconds": %s, "install_seconds": %s, "selftest_seconds": %s, "numpy": "%s", "selftest": %s}' \
    "$ARCH" "$kernels" "$([[ -z $FAILED_STEP ]] && echo true || echo false)" "$FAILED_STEP" \
    "${DEBOOTSTRAP_SECONDS:-null}" "${INSTALL_SECONDS:-null}" "${SELFTEST_SECONDS:-null}" \
    "$NUMPY" "$report")")
}

run_selftests() {
  local kernels=numpy
  [[ $ARCH == arm64 ]] && kernels=numba
  SELFTEST_SECONDS=''
  if timed "selftest-$kernels" selftest; then
    SELFTEST_SECONDS=$SECONDS_TAKEN
    record "$kernels" "$(tail -n 1 "$WORKDIR/$ARCH-selftest-$kernels.log")"
  else
    record "$kernels"
    return 0
  fi
  # arm64 also runs the numpy kernels, the path 32-bit boards take, on PyPI's numpy.
  [[ $ARCH == arm64 ]] || return 0
  SELFTEST_SECONDS=''
  if timed selftest-numpy selftest BITFLEET_NO_NUMBA=1; then
    SELFTEST_SECONDS=$SECONDS_TAKEN
    record numpy "$(tail -n 1 "$WORKDIR/$ARCH-selftest-numpy.log")"
  else
    record numpy
  fi
}

test_arch() {
  ARCH=$1 ROOTFS=$WORKDIR/rootfs-$1 FAILED_STEP='' NUMPY=''
  DEBOOTSTRAP_SECONDS='' INSTALL_SECONDS='' SELFTEST_SECONDS=''
  step "$ARCH: debootstrap $SUITE into $ROOTFS"
  enable_binfmt "$ARCH"
  remove_rootfs "$ROOTFS"
  if ! timed debootstrap debootstrap --arch="$ARCH" --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"; then
    record -
    return 0
  fi
  DEBOOTSTRAP_SECONDS=$SECONDS_TAKEN
  mount -t proc proc "$ROOTFS/proc"
  MOUNTED+=("$ROOTFS/proc")
  mount -t sysfs sysfs "$ROOTFS/sys"
  MOUNTED+=("$ROOTFS/sys")
  mount --bind /dev "$ROOTFS/dev"
  MOUNTED+=("$ROOTFS/dev")

  step "$ARCH: install.sh --no-service --wheel ${WHEEL##*/}"
  if timed compiler-before no_compiler && timed install install_agent; then
    INSTALL_SECONDS=$SECONDS_TAKEN
    if timed compiler-after no_compiler && timed numpy numpy_origin; then
      NUMPY=$(tail -n 1 "$WORKDIR/$ARCH-numpy.log")
      step "$ARCH: bitfleet-agent selftest --samples $SAMPLES (numpy $NUMPY)"
      run_selftests
    else
      record -
    fi
  else
    record -
  fi
  unmount_all
  [[ $KEEP == yes ]] || remove_rootfs "$ROOTFS"
}

# --- summary --------------------------------------------------------------------------------

summarize() {
  printf '[%s]\n' "$(
    IFS=,
    echo "${RESULTS[*]}"
  )" >"$WORKDIR/results.json"
  python3 - "$WORKDIR/results.json" <<'EOF'
import json, sys

rows = json.load(open(sys.argv[1]))
print(f"{'arch':6} {'kernels':7} {'result':6} {'debootstrap':>11} {'install':>7} "
      f"{'selftest':>8} {'train':>7} {'samples/s':>9} {'peak RSS':>9}  numpy")
def s(value):
    return "-" if value is None else f"{value} s"
for row in rows:
    report = row["selftest"] or {}
    result = "pass" if row["passed"] else f"FAIL ({row['failed_step']})"
    print(f"{row['arch']:6} {row['kernels']:7} {result:6} {s(row['debootstrap_seconds']):>11} "
          f"{s(row['install_seconds']):>7} {s(row['selftest_seconds']):>8} "
          f"{s(report.get('seconds')):>7} {report.get('samples_per_second', '-'):>9} "
          f"{str(report.get('peak_rss_mb', '-')) + ' MB':>9}  {row['numpy']}")
EOF
  printf '(debootstrap, install and selftest: wall time of each step under qemu-user; train and\n'
  printf "samples/s: the selftest's own round; peak RSS: getrusage inside the guest, i.e. of the\n"
  printf 'emulated process including qemu itself)\n'
  printf 'results: %s\n' "$WORKDIR/results.json"
}

main() {
  parse_args "$@"
  validate
  [[ $(id -u) -eq 0 ]] || die "$EXIT_SYSTEM" "run as root: sudo $PROG (debootstrap and chroot)"
  command -v apt-get >/dev/null 2>&1 || die "$EXIT_SYSTEM" "apt-get not found: run on Debian or Ubuntu"
  local started=$EPOCHREALTIME arch
  mkdir -p "$WORKDIR"
  install_host_packages
  [[ -n $WHEEL ]] || build_wheel
  [[ -n $DATA ]] || make_data
  RESULTS=()
  for arch in "${ARCHES[@]}"; do test_arch "$arch"; done
  summarize
  printf 'took %s s\n' "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')"
  ! grep -q '"passed": false' "$WORKDIR/results.json" || exit "$EXIT_FAILED"
}

main "$@"
