#!/bin/sh
# Installs the Diplo agent on a Debian, Ubuntu or Raspberry Pi OS host and joins it to a
# cluster, in one command:
#
#   curl -sfL http://HOST:8000/install.sh | sh -s -- --server HOST:7443 --token 'DIPLO1::…' \
#       --agent-url http://HOST:8000/diplo-agent --sha256 HEX
#
# Options (each also read from the environment variable named beside it):
#   --server HOST:PORT   DIPLO_SERVER        the control plane's gRPC address (required)
#   --token TOKEN        DIPLO_TOKEN         join token from `diplo join-token create`
#                                            (required unless this host joined before)
#   --name NAME          DIPLO_NODE_NAME     node name (default: the host name, lower case)
#   --agent-url URL      DIPLO_AGENT_URL     where to download diplo-agent: the binary or
#                                            the diplo-agent .deb (http, https or file URL)
#   --agent-file PATH    DIPLO_AGENT_FILE    a local diplo-agent binary or .deb instead
#   --sha256 HEX         DIPLO_AGENT_SHA256  the SHA-256 the download (or file) must have
#
# It installs the binary as /usr/local/bin/diplo-agent (a .deb: with dpkg, as
# /usr/bin/diplo-agent with its unit), writes /etc/default/diplo-agent (mode 0600: the
# token is a secret), and, where systemd runs, installs diplo-agent.service and runs
# `systemctl enable --now diplo-agent` (it returns once the node has joined: the unit is
# Type=notify). Without systemd it starts the agent itself in the background and says so.
# Run it again to upgrade: the node keeps its identity (/var/lib/diplo/agent).
set -eu

# The whole script is one compound command, closed on its last line: sh reads all of it
# before it runs any of it, so a download cut short (`curl … | sh`) runs nothing.
{
AGENT_BIN=/usr/local/bin/diplo-agent
DEFAULTS=/etc/default/diplo-agent
UNIT=/etc/systemd/system/diplo-agent.service
DATA_DIR=/var/lib/diplo/agent
LOG_FILE=/var/log/diplo-agent.log
PID_FILE=/var/lib/diplo/diplo-agent.pid
START_WAIT=${DIPLO_INSTALL_WAIT:-300}

say() { echo "[diplo install] $*"; }
die() { echo "[diplo install] error: $*" >&2; exit 1; }

server=${DIPLO_SERVER:-}
token=${DIPLO_TOKEN:-}
name=${DIPLO_NODE_NAME:-}
agent_url=${DIPLO_AGENT_URL:-}
agent_file=${DIPLO_AGENT_FILE:-}
sha256=${DIPLO_AGENT_SHA256:-}

usage() {
    cat <<'USAGE'
usage: install.sh --server HOST:PORT --token 'DIPLO1::…' (--agent-url URL | --agent-file PATH)
                  [--sha256 HEX] [--name NAME]
Installs diplo-agent, writes /etc/default/diplo-agent (0600) and starts the agent (under
systemd: systemctl enable --now diplo-agent). Each option may also come from the
environment: DIPLO_SERVER, DIPLO_TOKEN, DIPLO_AGENT_URL, DIPLO_AGENT_FILE,
DIPLO_AGENT_SHA256, DIPLO_NODE_NAME.
USAGE
}

# needs_value OPTION ARGC: an option's value must follow it.
needs_value() { [ "$2" -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --server) needs_value "$1" $#; server=$2; shift 2 ;;
        --server=*) server=${1#*=}; shift ;;
        --token) needs_value "$1" $#; token=$2; shift 2 ;;
        --token=*) token=${1#*=}; shift ;;
        --name) needs_value "$1" $#; name=$2; shift 2 ;;
        --name=*) name=${1#*=}; shift ;;
        --agent-url) needs_value "$1" $#; agent_url=$2; shift 2 ;;
        --agent-url=*) agent_url=${1#*=}; shift ;;
        --agent-file) needs_value "$1" $#; agent_file=$2; shift 2 ;;
        --agent-file=*) agent_file=${1#*=}; shift ;;
        --sha256) needs_value "$1" $#; sha256=$2; shift 2 ;;
        --sha256=*) sha256=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# ------------------------------------------------------------------ arguments
# Every value that goes into a configuration line is checked against a strict pattern
# first: no newline, quote, space or shell character can reach /etc/default/diplo-agent
# (which systemd and this script read as KEY=VALUE lines).

# matches VALUE ERE: VALUE is one line matching the extended regular expression.
matches() {
    case "$1" in *'
'*) return 1 ;; esac
    printf '%s\n' "$1" | grep -Eq "$2"
}

[ -n "$server" ] || die "--server HOST:PORT is required (the control plane's gRPC address, e.g. 192.168.100.1:7443)"
matches "$server" '^([A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$' \
    || die "--server must be HOST:PORT (a host name, IPv4 address or [IPv6] address, and a port), got an invalid value"
port=${server##*:}
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "--server: the port must be between 1 and 65535"

if [ -n "$token" ]; then
    matches "$token" '^DIPLO1::[0-9A-Fa-f]{64}::[A-Za-z0-9]{1,128}\.[A-Za-z0-9]{1,256}$' \
        || die "--token must be a join token, DIPLO1::<64 hex>::<id>.<secret> (from \`diplo join-token create\`), got an invalid value"
fi

if [ -z "$name" ]; then
    name=$(tr 'A-Z' 'a-z' </proc/sys/kernel/hostname 2>/dev/null || true)
fi
matches "$name" '^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$' \
    || die "--name must be a node name: lower-case letters, digits, '.' and '-', at most 63, starting and ending with a letter or digit"

if [ -n "$sha256" ]; then
    matches "$sha256" '^[0-9A-Fa-f]{64}$' || die "--sha256 must be 64 hex characters"
    sha256=$(printf '%s' "$sha256" | tr 'A-F' 'a-f')
fi
if [ -n "$agent_url" ] && [ -n "$agent_file" ]; then
    die "give either --agent-url or --agent-file, not both"
fi
if [ -n "$agent_url" ]; then
    matches "$agent_url" '^(https?|file)://[]A-Za-z0-9._~:/?#@!$&()*+,;=%[-]+$' \
        || die "--agent-url must be an http://, https:// or file:// URL without spaces or quotes"
elif [ -z "$agent_file" ]; then
    die "no agent to install: give --agent-url URL (DIPLO_AGENT_URL) or --agent-file PATH (DIPLO_AGENT_FILE)"
fi

if [ -z "$token" ] && [ ! -f "$DATA_DIR/node.json" ]; then
    die "--token is required: this host has not joined a cluster yet (no $DATA_DIR/node.json)"
fi

# ------------------------------------------------------------------ host
[ "$(id -u)" = 0 ] || die "must run as root (the agent drives the container runtimes): pipe into \`sudo sh -s -- …\`"

[ -r /etc/os-release ] || die "unsupported operating system: no /etc/os-release (Debian, Ubuntu or Raspberry Pi OS needed)"
os_id=$(. /etc/os-release && printf '%s' "${ID:-}")
os_like=$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")
os_name=$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-${ID:-unknown}}")
case " $os_id $os_like " in
    *" debian "*|*" ubuntu "*|*" raspbian "*) ;;
    *) die "unsupported operating system: $os_name (Debian, Ubuntu or Raspberry Pi OS needed)" ;;
esac

machine=$(uname -m)
case "$machine" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    armv7l|armv6l|armhf) arch=armhf ;;
    *) die "unsupported architecture: $machine (amd64, arm64 or armhf needed)" ;;
esac
say "host: $os_name, $arch"

# ------------------------------------------------------------------ the agent
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

if [ -n "$agent_url" ]; then
    say "downloading $agent_url"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 --proto '=https,http,file' -o "$work/agent" "$agent_url" || die "cannot download $agent_url"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$work/agent" "$agent_url" || die "cannot download $agent_url"
    else
        die "neither curl nor wget is installed: install one, or give --agent-file PATH"
    fi
else
    [ -f "$agent_file" ] || die "--agent-file: no such file: $agent_file"
    cp "$agent_file" "$work/agent"
fi
[ -s "$work/agent" ] || die "the agent download is empty"

if [ -n "$sha256" ]; then
    got=$(sha256sum "$work/agent" | cut -d' ' -f1)
    [ "$got" = "$sha256" ] || die "the agent's SHA-256 is $got, not the expected $sha256: not installed"
    say "checksum ok (sha256 $got)"
else
    say "warning: no --sha256 given: the agent is installed unchecked"
fi

if [ "$(head -c 8 "$work/agent")" = '!<arch>' ]; then
    command -v dpkg >/dev/null 2>&1 || die "a .deb was given but dpkg is not installed"
    say "installing the diplo-agent package"
    cp "$work/agent" "$work/diplo-agent.deb"
    DEBIAN_FRONTEND=noninteractive dpkg -i --force-confdef --force-confold "$work/diplo-agent.deb" >"$work/dpkg.log" 2>&1 \
        || { cat "$work/dpkg.log" >&2; die "dpkg could not install the package"; }
    AGENT_BIN=/usr/bin/diplo-agent
    packaged=1
else
    install -d -m 0755 "$(dirname "$AGENT_BIN")"
    install -m 0755 "$work/agent" "$AGENT_BIN.new"
    # Tried before it replaces an agent already installed.
    "$AGENT_BIN.new" --version >/dev/null 2>&1 \
        || { rm -f "$AGENT_BIN.new"; die "the downloaded agent does not run on this host ($arch): is it the build for $arch?"; }
    mv -f "$AGENT_BIN.new" "$AGENT_BIN"
    packaged=0
fi
version=$("$AGENT_BIN" --version 2>/dev/null) || die "$AGENT_BIN does not run on this host ($arch): is it the build for $arch?"
say "installed $AGENT_BIN ($version)"

# ------------------------------------------------------------------ configuration
install -d -m 0755 /etc/default
old_umask=$(umask)
umask 077
{
    echo "# diplo-agent settings, written by install.sh ($(date -u +%Y-%m-%dT%H:%M:%SZ)). Mode 0600: the token is a secret."
    echo "# Read by diplo-agent.service (EnvironmentFile); see \`diplo-agent --help\`."
    echo "DIPLO_SERVER=$server"
    echo "DIPLO_NODE_NAME=$name"
    if [ -n "$token" ]; then
        echo "# Needed for the first start only: the node keeps its identity in $DATA_DIR."
        echo "DIPLO_TOKEN=$token"
    fi
} >"$DEFAULTS.new"
chmod 0600 "$DEFAULTS.new"
mv -f "$DEFAULTS.new" "$DEFAULTS"
umask "$old_umask"
say "wrote $DEFAULTS (0600)"

# ------------------------------------------------------------------ start
# unit_file: deploy/systemd/diplo-agent.service, ExecStart at /usr/local/bin.
unit_file() {
    cat <<'UNIT'
# Diplo node agent (installed by the diplo-agent package, or by deploy/install.sh).
# Settings: /etc/default/diplo-agent (0600: DIPLO_SERVER=host:7443, DIPLO_TOKEN=DIPLO1::…
# for the first start only, DIPLO_NODE_NAME, …; see `diplo-agent --help`).
# Start: systemctl enable --now diplo-agent
[Unit]
Description=Diplo node agent
Documentation=file:///usr/share/doc/diplo-agent/README.md
After=network-online.target docker.service containerd.service podman.socket lxc-net.service
Wants=network-online.target
# Never give up: an agent that cannot start now (runtime or network not there yet) keeps
# trying every few seconds.
StartLimitIntervalSec=0

[Service]
# READY=1 is sent once the agent holds its node identity (joined now with the token, or
# saved from before) and its runtime drivers, as it begins connecting its session. A
# control plane that is away later does not fail or delay the start: the agent reconnects
# by itself. The first join may wait for the control plane: up to TimeoutStartSec.
Type=notify
NotifyAccess=main
ExecStart=/usr/local/bin/diplo-agent --data-dir /var/lib/diplo/agent
EnvironmentFile=-/etc/default/diplo-agent
Restart=always
RestartSec=2s
TimeoutStartSec=300s
TimeoutStopSec=30s
# Root: it drives the runtimes' sockets, and LXC containers and build steps are its own
# child processes. Delegate=yes hands it its cgroup subtree (LXC puts containers there);
# KillMode=process stops or restarts only the agent itself, never its containers (it
# re-adopts them when it comes back).
Delegate=yes
KillMode=process
StateDirectory=diplo/agent
StateDirectoryMode=0700
LimitNOFILE=1048576
TasksMax=infinity
# The agent is what keeps the node's containers supervised: the OOM killer takes it last.
OOMScoreAdjust=-500

# Hardening that the containers and builds it starts (which inherit its namespaces,
# seccomp filters and capability bounds) survive: no seccomp filter, no capability bound,
# no device policy. /usr and /boot are read-only; the kernel log is not readable.
ProtectSystem=true
ProtectKernelLogs=yes

[Install]
WantedBy=multi-user.target
UNIT
}

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if [ "$packaged" = 0 ]; then
        unit_file >"$UNIT.new"
        chmod 0644 "$UNIT.new"
        mv -f "$UNIT.new" "$UNIT"
        say "wrote $UNIT"
    elif [ -f "$UNIT" ] && grep -q '^ExecStart=/usr/local/bin/diplo-agent' "$UNIT"; then
        # An earlier install of the binary: the package's unit takes over.
        rm -f "$UNIT"
        say "removed $UNIT (the package's unit runs /usr/bin/diplo-agent)"
    fi
    systemctl daemon-reload
    # Type=notify: this returns once the agent has joined (or fails with the reason).
    if systemctl is-active --quiet diplo-agent.service; then
        systemctl restart diplo-agent.service || { journalctl -u diplo-agent.service -n 30 --no-pager >&2 || true; die "diplo-agent did not restart"; }
        systemctl enable --quiet diplo-agent.service
    else
        systemctl enable --now diplo-agent.service || { journalctl -u diplo-agent.service -n 30 --no-pager >&2 || true; die "diplo-agent did not start"; }
    fi
    say "diplo-agent is running under systemd (systemctl status diplo-agent; journalctl -u diplo-agent)"
    exit 0
fi

# No systemd: start the agent ourselves, replacing one this script started before.
say "systemd is not running here: starting diplo-agent myself (not restarted if it stops, not started at boot: add it to this host's init system)"
if [ -f "$PID_FILE" ]; then
    old=$(cat "$PID_FILE")
    if matches "$old" '^[0-9]+$' && [ "$(cat "/proc/$old/comm" 2>/dev/null || true)" = diplo-agent ]; then
        say "stopping the agent started before (pid $old)"
        kill "$old" 2>/dev/null || true
        i=0
        while [ -d "/proc/$old" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    fi
fi
install -d -m 0700 "$DATA_DIR"
install -d -m 0755 "$(dirname "$LOG_FILE")"
(
    set -a
    . "$DEFAULTS"
    set +a
    umask 077
    exec setsid "$AGENT_BIN" --data-dir "$DATA_DIR" </dev/null >>"$LOG_FILE" 2>&1
) &
pid=$!
echo "$pid" >"$PID_FILE"
# Started once the node holds its identity (joined) and the agent still runs.
waited=0
while [ ! -f "$DATA_DIR/node.json" ]; do
    if [ ! -d "/proc/$pid" ]; then
        tail -n 30 "$LOG_FILE" >&2 || true
        die "diplo-agent stopped (log: $LOG_FILE)"
    fi
    [ "$waited" -lt "$((START_WAIT * 10))" ] || die "diplo-agent has not joined after ${START_WAIT}s (log: $LOG_FILE)"
    sleep 0.1
    waited=$((waited + 1))
done
sleep 1
[ -d "/proc/$pid" ] || { tail -n 30 "$LOG_FILE" >&2 || true; die "diplo-agent stopped after joining (log: $LOG_FILE)"; }
say "diplo-agent joined as $name and runs in the background (pid $pid, log $LOG_FILE)"
}
