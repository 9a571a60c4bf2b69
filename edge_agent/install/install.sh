#!/usr/bin/env bash
# Install the bitfleet agent as a systemd service on Raspberry Pi OS (64-bit aarch64, 32-bit
# armv7l/armv6l) or any Debian/Ubuntu machine. Re-running it upgrades in place.
#
#   sudo edge_agent/install/install.sh --coordinator URL --agent-id ID --secret SECRET --data PATH
#   edge_agent/install/install.sh --dry-run ...   # show every command and file; change nothing
#
# What it does: apt-get install python3-venv (and python3-numpy on 32-bit ARM; no compiler),
# create the system user, the config and state directories, a virtualenv with the package (a
# wheel, a checkout, by default the one this script is in), enroll the agent (as the service
# user), then write, enable and (re)start bitfleet-agent.service. See README.md beside this file.
set -Eeuo pipefail

readonly PROG=${0##*/}

# The fixed layout. The service, its unit and the dry-run output all derive from these.
readonly SERVICE=bitfleet-agent
readonly UNIT_FILE=/etc/systemd/system/$SERVICE.service
readonly CONFIG_DIR=/etc/bitfleet-agent
readonly CONFIG_FILE=$CONFIG_DIR/agent.json
readonly VAR_DIR=/var/lib/bitfleet-agent
readonly STATE_DIR=$VAR_DIR/state
readonly DATA_DIR=$VAR_DIR/data
# numba caches compiled kernels beside its sources by default, which are read-only under the
# unit's ProtectSystem=strict: it caches here instead (compiling takes a while on a Pi).
readonly CACHE_DIR=$VAR_DIR/cache
# The Debian Python that python3-venv belongs to; not whatever python3 is first on root's PATH
# (a pyenv or /usr/local build may be unreadable to the service user or lack venv).
readonly PYTHON=/usr/bin/python3
readonly MIN_PYTHON=3.10 # requires-python in pyproject.toml

# Exit codes.
readonly EXIT_FAILED=1 # a step failed; the message names it
readonly EXIT_USAGE=2  # bad or missing options
readonly EXIT_SYSTEM=3 # this machine cannot run the service (not root, no apt, no systemd, old Python)
readonly EXIT_ENROLL=4 # the coordinator did not accept the enrollment (or could not be reached)

usage() {
  cat <<EOF
Usage: sudo $PROG --coordinator URL --agent-id ID --secret SECRET --data PATH [options]
       sudo $PROG --skip-enroll [options]          upgrade or reinstall, keep the config
       sudo $PROG --no-service [options]           only the virtualenv (a chroot, an image)
       sudo $PROG --uninstall [--purge]            remove the service (and its data)

Installs the bitfleet agent as the systemd service $SERVICE. Safe to re-run: it upgrades the
package in place, rewrites the unit and restarts the service.

Enrollment (required unless --skip-enroll):
  --coordinator URL   coordinator base URL, http:// or https://
  --agent-id ID       this board's agent id, as registered on the coordinator
  --secret SECRET     the agent's enrollment secret (never printed; masked in the output)
  --mqtt-url URL      broker URL written into the config, e.g. mqtt://broker:1883

Service:
  --data PATH         the board's local data (file or directory); copied into $DATA_DIR.
                      Required on the first install; a re-run keeps the installed one.
  --transport MODE    auto (default), mqtt or http; a re-run keeps the installed one

Installation: what to install, one of (default: the checkout this script is part of)
  --wheel FILE        a bitfleet wheel, e.g. dist/bitfleet-0.1.0-py3-none-any.whl ('make dist')
  --source DIR        a bitfleet source tree (the directory with pyproject.toml)
  --package SPEC      a package name or version (bitfleet==0.1.0) once bitfleet is on an index
                      (it is not yet), or a directory or wheel file. A SPEC that already names
                      extras (contains '[') is used as it is.
                      The extras are added for you: [agent,fast] on aarch64 and x86_64 (numba
                      has wheels there), [agent] elsewhere (the numpy kernels run). On 32-bit
                      ARM (armv7l, armv6l), where PyPI has no numpy wheels, numpy is Debian's
                      python3-numpy, seen through a virtualenv with --system-site-packages.
  --prefix DIR        virtualenv directory (default: /opt/bitfleet-agent)
  --user NAME         system user the service runs as (default: bitfleet)
  --arch ARCH         override the detected architecture (aarch64/arm64, x86_64/amd64,
                      armv7l/armhf, armv6l), e.g. to preview another board's install
  --skip-enroll       do not enroll; keep $CONFIG_FILE as it is
  --no-service        install the system packages and the virtualenv only: no user, data,
                      enrollment or unit; for a chroot or an image build, where no systemd
                      runs. Check the result with: $PREFIX/bin/bitfleet-agent selftest

Other:
  --dry-run           print every command and file this run would execute or write, change
                      nothing; needs neither root nor a Debian machine
  --uninstall         stop and remove the service, its unit, the virtualenv and the config;
                      keep $VAR_DIR and the user
  --purge             with --uninstall: also remove $VAR_DIR (state and data) and the user
  -h, --help          show this help

Offline: pass --wheel and point pip at a wheel directory for the dependencies, e.g.
  sudo PIP_NO_INDEX=1 PIP_FIND_LINKS=/media/usb/wheels $PROG --wheel /media/usb/wheels/bitfleet-0.1.0-py3-none-any.whl ...

Exit codes: 0 success, $EXIT_FAILED a step failed, $EXIT_USAGE usage error, $EXIT_SYSTEM unsuitable system (not root, no
apt-get or systemd, Python older than $MIN_PYTHON), $EXIT_ENROLL enrollment failed.
EOF
}

# --- output and error helpers -------------------------------------------------------------

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

# A backstop: every changing command goes through run(), which names what failed; this
# catches anything else set -e would otherwise end silently.
trap 'die "$EXIT_FAILED" "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# Quote one word for display, the way one would type it: bare when safe, else in '...'.
readonly SAFE_WORD='^[A-Za-z0-9_@%+=:,./-]+$'
quote() {
  if [[ $1 =~ $SAFE_WORD ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print a command as "+ word word ...", with the enrollment secret masked.
show_cmd() {
  local arg line=
  for arg in "$@"; do
    if [[ $arg == --secret=* ]]; then
      line+=" --secret=********"
    else
      line+=" $(quote "$arg")"
    fi
  done
  printf '+%s\n' "$line"
}

dry_run() { [[ $DRY_RUN == yes ]]; }

# Run a command that changes the system; in a dry run, only show it.
run() {
  show_cmd "$@"
  dry_run && return 0
  "$@" || die "$EXIT_FAILED" "command failed (exit $?): $(show_cmd "$@")"
}

# write_file PATH MODE OWNER:GROUP < content. Atomic (temporary file + rename). A dry run
# prints the content between BEGIN/END marker lines instead.
write_file() {
  local path=$1 mode=$2 owner=$3 content tmp
  content=$(cat)
  printf '+ write %s (mode %s, owner %s)\n' "$path" "$mode" "$owner"
  if dry_run; then
    printf -- '----- BEGIN %s -----\n%s\n----- END %s -----\n' "$path" "$content" "$path"
    return 0
  fi
  tmp=$(mktemp "$path.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
}

# A condition a real run cannot go on without: fatal for real, a note in a dry run (which
# must work on any machine).
require_system() {
  local message=$1
  if dry_run; then
    note "note: a real run on this machine would stop here: $message"
  else
    die "$EXIT_SYSTEM" "$message"
  fi
}

abspath() {
  if [[ -d $1 ]]; then
    (cd -- "$1" && pwd -P)
  else
    printf '%s/%s\n' "$(cd -- "$(dirname -- "$1")" && pwd -P)" "$(basename -- "$1")"
  fi
}

# --- options --------------------------------------------------------------------------------

COORDINATOR='' AGENT_ID='' SECRET='' MQTT_URL='' DATA='' TRANSPORT=''
PACKAGE_FROM='' PACKAGE_ARG='' # which of --wheel, --source, --package was given, and its value
PREFIX=/opt/bitfleet-agent SERVICE_USER=bitfleet ARCH=
SKIP_ENROLL=no DRY_RUN=no UNINSTALL=no PURGE=no NO_SERVICE=no
INSTALL_ONLY_OPTIONS= # install options given, to reject them with --uninstall
SERVICE_OPTIONS=      # service options given, to reject them with --no-service

parse_args() {
  local opt value inline
  while (($# > 0)); do
    opt=$1 value='' inline=no
    shift
    if [[ $opt == --*=* ]]; then
      value=${opt#*=} opt=${opt%%=*} inline=yes
    fi
    case $opt in
      --coordinator | --agent-id | --secret | --mqtt-url | --data | --transport | --wheel | \
        --source | --package | --prefix | --user | --arch)
        if [[ $inline == no ]]; then
          [[ $# -gt 0 && $1 != --* ]] || usage_error "$opt needs a value"
          value=$1
          shift
        fi
        [[ -n $value ]] || usage_error "$opt needs a value"
        case $opt in
          --coordinator) COORDINATOR=$value ;;
          --agent-id) AGENT_ID=$value ;;
          --secret) SECRET=$value ;;
          --mqtt-url) MQTT_URL=$value ;;
          --data) DATA=$value ;;
          --transport) TRANSPORT=$value ;;
          --wheel | --source | --package)
            [[ -z $PACKAGE_FROM || $PACKAGE_FROM == "$opt" ]] ||
              usage_error "$PACKAGE_FROM and $opt both say what to install: give one"
            PACKAGE_FROM=$opt PACKAGE_ARG=$value
            ;;
          --prefix) PREFIX=$value ;;
          --user) SERVICE_USER=$value ;;
          --arch) ARCH=$value ;;
        esac
        case $opt in
          --prefix | --arch) ;;
          --user) SERVICE_OPTIONS+=" $opt" ;;
          --wheel | --source | --package) INSTALL_ONLY_OPTIONS+=" $opt" ;;
          *) INSTALL_ONLY_OPTIONS+=" $opt" SERVICE_OPTIONS+=" $opt" ;;
        esac
        ;;
      --skip-enroll | --no-service | --dry-run | --uninstall | --purge)
        [[ $inline == no ]] || usage_error "$opt takes no value"
        case $opt in
          --skip-enroll) SKIP_ENROLL=yes INSTALL_ONLY_OPTIONS+=" $opt" SERVICE_OPTIONS+=" $opt" ;;
          --no-service) NO_SERVICE=yes INSTALL_ONLY_OPTIONS+=" $opt" ;;
          --dry-run) DRY_RUN=yes ;;
          --uninstall) UNINSTALL=yes ;;
          --purge) PURGE=yes ;;
        esac
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) usage_error "unknown option: $opt" ;;
    esac
  done
}

# The value of "--NAME VALUE" on the ExecStart line of the installed unit, if any: a re-run
# without --data/--transport keeps what the service already uses.
installed_unit_arg() {
  [[ -f $UNIT_FILE ]] || return 0
  sed -n "s/^ExecStart=.* --$1 \\([^ ]*\\).*/\\1/p" "$UNIT_FILE"
}

# The architecture of the userland (what pip installs for), not the kernel's: Raspberry Pi OS
# 32-bit runs a 64-bit kernel on recent boards, where uname -m says aarch64 but numba (which
# has no 32-bit ARM wheels) cannot be installed. dpkg knows; uname -m is the fallback.
detect_arch() {
  if command -v dpkg >/dev/null 2>&1; then dpkg --print-architecture; else uname -m; fi
}

normalize_arch() {
  case $1 in
    aarch64 | arm64) echo aarch64 ;;
    x86_64 | amd64) echo x86_64 ;;
    armv7l | armhf) echo armv7l ;;
    *) echo "$1" ;;
  esac
}

validate() {
  if [[ $UNINSTALL == yes ]]; then
    [[ -z $INSTALL_ONLY_OPTIONS ]] ||
      usage_error "--uninstall takes only --purge, --prefix, --user and --dry-run (got:$INSTALL_ONLY_OPTIONS)"
  elif [[ $PURGE == yes ]]; then
    usage_error "--purge only goes with --uninstall"
  elif [[ $NO_SERVICE == yes ]]; then
    [[ -z $SERVICE_OPTIONS ]] ||
      usage_error "--no-service installs only the virtualenv: drop$SERVICE_OPTIONS"
  else
    if [[ $SKIP_ENROLL == yes ]]; then
      [[ -z $COORDINATOR$AGENT_ID$SECRET$MQTT_URL ]] ||
        usage_error "--coordinator, --agent-id, --secret and --mqtt-url are for enrolling: drop them or --skip-enroll"
      [[ -f $CONFIG_FILE ]] || dry_run ||
        usage_error "--skip-enroll keeps the config, but there is no $CONFIG_FILE: enroll (--coordinator ...)"
    else
      [[ -n $COORDINATOR ]] || usage_error "missing --coordinator URL (the coordinator to enroll with; or --skip-enroll to keep the current config)"
      [[ -n $AGENT_ID ]] || usage_error "missing --agent-id ID (or --skip-enroll)"
      [[ -n $SECRET ]] || usage_error "missing --secret SECRET (or --skip-enroll)"
      [[ $COORDINATOR =~ ^https?://[^[:space:]]+$ ]] ||
        usage_error "--coordinator must be an http:// or https:// URL, got '$COORDINATOR'"
    fi
    TRANSPORT=${TRANSPORT:-$(installed_unit_arg transport)}
    TRANSPORT=${TRANSPORT:-auto}
    case $TRANSPORT in
      auto | mqtt | http) ;;
      *) usage_error "--transport must be auto, mqtt or http, got '$TRANSPORT'" ;;
    esac
  fi

  # Paths go into the unit's ExecStart unquoted: keep them to characters systemd takes as-is.
  [[ $PREFIX =~ ^/[A-Za-z0-9._+/-]+$ ]] ||
    usage_error "--prefix must be an absolute path of letters, digits and ._+-/, got '$PREFIX'"
  PREFIX=${PREFIX%/}
  # Re-runs reuse the virtualenv and --uninstall deletes it: never take over another directory.
  if [[ -d $PREFIX && ! -f $PREFIX/pyvenv.cfg && -n $(ls -A "$PREFIX") ]]; then
    usage_error "--prefix $PREFIX exists and is not a virtualenv; choose an empty or new directory"
  fi
  [[ $SERVICE_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] ||
    usage_error "--user must be a lower-case system user name, got '$SERVICE_USER'"

  ARCH=$(normalize_arch "${ARCH:-$(detect_arch)}")
  [[ $UNINSTALL == yes ]] && return 0

  [[ $NO_SERVICE == yes ]] || validate_data
  REQUIREMENT=$(package_requirement) || exit
}

# Decide DATA_PATH, the path the service reads (always under $DATA_DIR), and DATA_SOURCE, the
# file or directory to copy there (empty when nothing needs copying). ProtectHome= hides /home
# from the service, so a copy is what lets it read data the user kept in their home.
validate_data() {
  DATA_SOURCE=
  if [[ -z $DATA ]]; then
    DATA_PATH=$(installed_unit_arg data)
    [[ -n $DATA_PATH ]] || usage_error "missing --data PATH (the board's local data file or directory)"
    return 0
  fi
  [[ -e $DATA ]] || usage_error "--data $DATA: no such file or directory"
  DATA=$(abspath "$DATA")
  if [[ $DATA == "$DATA_DIR"/* ]]; then
    DATA_PATH=$DATA
  else
    DATA_SOURCE=$DATA
    DATA_PATH=$DATA_DIR/$(basename -- "$DATA")
  fi
  [[ $DATA_PATH =~ ^/[A-Za-z0-9._+/-]+$ ]] ||
    usage_error "--data: rename '$DATA' to letters, digits and ._+- only (the path goes into the unit file)"
}

# The pip requirement: what --wheel, --source or --package names (by default this script's
# own checkout: bitfleet is on no index yet), plus the extras for this architecture.
package_requirement() {
  local extras=agent spec=$PACKAGE_ARG checkout
  if has_numba_wheels; then extras=agent,fast; fi
  case $PACKAGE_FROM in
    --wheel)
      [[ -f $spec ]] || usage_error "--wheel $spec: no such file (build one with 'make dist')"
      [[ $spec == *.whl ]] || usage_error "--wheel $spec: not a wheel (a .whl file)"
      printf '%s[%s]\n' "$(abspath "$spec")" "$extras"
      ;;
    --source)
      [[ -f $spec/pyproject.toml ]] ||
        usage_error "--source $spec: no pyproject.toml there (give the repository's top directory)"
      printf '%s[%s]\n' "$(abspath "$spec")" "$extras"
      ;;
    --package)
      if [[ $spec == *\[* ]]; then
        printf '%s\n' "$spec"
      elif [[ -e $spec ]]; then
        printf '%s[%s]\n' "$(abspath "$spec")" "$extras"
      elif [[ $spec =~ ^([A-Za-z0-9][A-Za-z0-9._-]*)((==|~=|!=|<=|>=|<|>).+)?$ ]]; then
        printf '%s[%s]%s\n' "${BASH_REMATCH[1]}" "$extras" "${BASH_REMATCH[2]}"
      else
        usage_error "--package $spec: no such file, and not a package name (give 'NAME[agent] @ URL' for a URL)"
      fi
      ;;
    *)
      checkout=$(own_checkout) ||
        usage_error "nothing to install: pass --wheel FILE (built with 'make dist'), --source DIR (a checkout) or --package SPEC (bitfleet is on no package index yet)"
      printf '%s[%s]\n' "$checkout" "$extras"
      ;;
  esac
}

# The repository this script is part of, if it runs from one: edge_agent/install/ under a
# directory whose pyproject.toml is bitfleet's.
own_checkout() {
  local here top
  here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P) || return 1
  top=${here%/edge_agent/install}
  [[ $top != "$here" && -f $top/pyproject.toml ]] || return 1
  grep -q '^name = "bitfleet"$' "$top/pyproject.toml" || return 1
  printf '%s\n' "$top"
}

has_numba_wheels() { [[ $ARCH == aarch64 || $ARCH == x86_64 ]]; }

# PyPI has no numpy wheels for 32-bit ARM, and piwheels is configured only on Raspberry Pi OS:
# there numpy is Debian's python3-numpy (a binary build), seen through the virtualenv.
uses_system_numpy() { [[ $ARCH == armv7l || $ARCH == armv6l ]]; }

# --- install steps ----------------------------------------------------------------------------

preflight() {
  command -v apt-get >/dev/null 2>&1 ||
    require_system "apt-get not found: this installer is for Debian, Ubuntu and Raspberry Pi OS"
  [[ $NO_SERVICE == yes || -d /run/systemd/system ]] ||
    require_system "systemd is not running here (a container? use docker/agent.Dockerfile; a chroot? use --no-service)"
}

install_system_packages() {
  # python3-venv gives the virtualenv its pip. No compiler: every dependency comes as a wheel,
  # or on 32-bit ARM, numpy as a Debian package.
  local packages=(python3-venv) missing=() package
  if uses_system_numpy; then packages+=(python3-numpy); fi
  step "system packages: ${packages[*]}"
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    note "already installed: ${packages[*]}"
  else
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi

  local version
  if ! version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    require_system "$PYTHON not found"
  elif ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))"; then
    require_system "bitfleet needs Python >= $MIN_PYTHON, this system has $version (Raspberry Pi OS / Debian 12 or newer)"
  fi
}

# The system user the service runs as: no login shell, home in $VAR_DIR.
create_user() {
  step "service user $SERVICE_USER"
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    note "user $SERVICE_USER exists"
    SERVICE_GROUP=$(id -gn "$SERVICE_USER")
  else
    run useradd --system --user-group --home-dir "$VAR_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "bitfleet agent" "$SERVICE_USER"
    SERVICE_GROUP=$SERVICE_USER
  fi
}

create_directories() {
  step "directories"
  # The config holds the secret: root owns the directory, the service's group may only read.
  run install -d -m 0750 -o root -g "$SERVICE_GROUP" "$CONFIG_DIR"
  run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_GROUP" \
    "$VAR_DIR" "$STATE_DIR" "$DATA_DIR" "$CACHE_DIR"
}

install_package() {
  step "virtualenv $PREFIX"
  local venv_options=(--clear) system_site=false
  if uses_system_numpy; then venv_options+=(--system-site-packages) system_site=true; fi
  if [[ -x $PREFIX/bin/python ]] && "$PREFIX/bin/python" -c '' 2>/dev/null &&
    grep -qx "include-system-site-packages = $system_site" "$PREFIX/pyvenv.cfg"; then
    note "reusing the virtualenv in $PREFIX"
  else
    # Also rebuilds a virtualenv whose Python went away (e.g. after a distribution upgrade) or
    # that sees the system's packages when it should not, or the other way round.
    run "$PYTHON" -m venv "${venv_options[@]}" "$PREFIX"
  fi
  has_numba_wheels || note "no numba wheels for $ARCH: the agent runs the numpy kernels (bit-exact, slower)"
  # --only-binary: never start compiling the numeric stack on a board without a compiler;
  # fail at once with pip's "no matching distribution" instead.
  run "$PREFIX/bin/python" -m pip install --no-input --disable-pip-version-check --upgrade \
    --only-binary=numpy,numba,llvmlite "$REQUIREMENT"
}

install_data() {
  step "data"
  if [[ -z $DATA_SOURCE ]]; then
    note "the service reads $DATA_PATH"
  elif [[ -d $DATA_SOURCE ]]; then
    run cp -R --no-target-directory "$DATA_SOURCE" "$DATA_PATH"
    run chown -R "$SERVICE_USER:$SERVICE_GROUP" "$DATA_PATH"
  else
    run install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$DATA_SOURCE" "$DATA_PATH"
  fi
}

enroll() {
  step "enrollment"
  if [[ $SKIP_ENROLL == yes ]]; then
    if [[ -f $CONFIG_FILE ]]; then
      note "--skip-enroll: keeping $CONFIG_FILE"
    else
      note "note: a real run would have stopped: --skip-enroll, but there is no $CONFIG_FILE"
    fi
    return 0
  fi
  local command=("$PREFIX/bin/bitfleet-agent" enroll --coordinator "$COORDINATOR"
    --agent-id "$AGENT_ID" --secret="$SECRET") # --secret=: a secret may begin with "-"
  [[ -z $MQTT_URL ]] || command+=(--mqtt-url "$MQTT_URL")
  command+=(--config "$CONFIG_FILE")
  # The agent writes its config 0600, so it has to be the service user who writes it. It may
  # create files in the config directory only for the time of the enrollment.
  run chmod 0770 "$CONFIG_DIR"
  show_cmd runuser -u "$SERVICE_USER" -- "${command[@]}"
  if ! dry_run && ! runuser -u "$SERVICE_USER" -- "${command[@]}"; then
    chmod 0750 "$CONFIG_DIR"
    die "$EXIT_ENROLL" "enrollment failed (the agent's message is above); nothing else was changed by this step"
  fi
  run chmod 0750 "$CONFIG_DIR"
}

render_unit() {
  cat <<EOF
# Written by bitfleet's edge_agent/install/install.sh: re-run it to change or upgrade.
[Unit]
Description=bitfleet federated training agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=$SERVICE_USER
Group=$SERVICE_GROUP
WorkingDirectory=$VAR_DIR
ExecStart=$PREFIX/bin/bitfleet-agent run --config $CONFIG_FILE --data $DATA_PATH --state-dir $STATE_DIR --transport $TRANSPORT
Environment=PYTHONUNBUFFERED=1
Environment=NUMBA_CACHE_DIR=$CACHE_DIR
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=30

# Hardening: the agent reads its code, config and data and writes only under $VAR_DIR.
# No MemoryDenyWriteExecute=: numba's JIT needs memory that is writable and executable.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths=$VAR_DIR
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
EOF
}

install_service() {
  step "systemd unit $UNIT_FILE"
  render_unit | write_file "$UNIT_FILE" 0644 root:root
  run systemctl daemon-reload
  run systemctl enable "$SERVICE"
  # restart, not just enable --now: on a re-run the upgraded package must replace the running one.
  run systemctl restart "$SERVICE"
  dry_run && return 0
  sleep 3
  systemctl is-active --quiet "$SERVICE" ||
    die "$EXIT_FAILED" "$SERVICE did not stay up; see: journalctl -u $SERVICE -n 50"
}

install_all() {
  if [[ $NO_SERVICE == yes ]]; then
    step "install $REQUIREMENT for $ARCH into $PREFIX, no service"
    preflight
    install_system_packages
    install_package
    step "done"
    note "check it: $PREFIX/bin/bitfleet-agent selftest --data FILE"
    return 0
  fi
  step "install $REQUIREMENT for $ARCH into $PREFIX, service user $SERVICE_USER"
  preflight
  install_system_packages
  create_user
  create_directories
  install_package
  install_data
  enroll
  install_service
  step "done"
  note "logs:   journalctl -u $SERVICE -f"
  note "status: sudo -u $SERVICE_USER $PREFIX/bin/bitfleet-agent status --config $CONFIG_FILE --state-dir $STATE_DIR"
}

uninstall_all() {
  step "uninstall $SERVICE"
  preflight
  if [[ -f $UNIT_FILE ]]; then
    run systemctl disable --now "$SERVICE"
  fi
  run rm -f "$UNIT_FILE"
  run systemctl daemon-reload
  run rm -rf "$PREFIX" "$CONFIG_DIR"
  if [[ $PURGE == yes ]]; then
    run rm -rf "$VAR_DIR"
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
      run userdel "$SERVICE_USER"
    fi
  else
    note "kept $VAR_DIR (state, data) and the user $SERVICE_USER; --purge removes them"
  fi
}

main() {
  parse_args "$@"
  if ! dry_run && [[ $(id -u) -ne 0 ]]; then
    die "$EXIT_SYSTEM" "run as root: sudo $PROG ... (or preview with --dry-run)"
  fi
  validate
  # From here on every path is absolute: work from / so that nothing depends on (or is
  # blocked by) the caller's directory, e.g. a home the service user cannot enter.
  cd /
  if dry_run; then
    step "dry run: nothing is changed; each command and file is shown as a real run would execute or write it (the secret masked)"
  fi
  if [[ $UNINSTALL == yes ]]; then uninstall_all; else install_all; fi
  if dry_run; then step "dry run complete: nothing was changed"; fi
}

main "$@"
