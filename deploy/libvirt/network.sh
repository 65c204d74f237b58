#!/usr/bin/env bash
# A libvirt NAT network for Diplo hosts (the SO1 layout uses 192.168.100.0/24).
#
#   deploy/libvirt/network.sh create  [--name diplo-so1] [--subnet 192.168.100.0/24] [--bridge BR]
#                                     [--dhcp-from N] [--dhcp-to N] [--connect URI]
#   deploy/libvirt/network.sh destroy [--name diplo-so1] [--connect URI]
#
# create defines, starts and autostarts the network: the host is the subnet's first address
# (192.168.100.1), DHCP hands out .100–.199 by default (VMs with addresses of their own, such
# as .10–.12 in the SO1 layout, stay outside that range), and traffic leaves through the host
# with NAT. It is idempotent: an existing network of that name is started if it is down.
# destroy stops and undefines it; a network that does not exist is not an error.
set -euo pipefail

die() { echo "network.sh: $*" >&2; exit 1; }
usage() { sed -n '4,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
action="$1"; shift
name="diplo-so1"
subnet="192.168.100.0/24"
bridge=""
dhcp_from=100
dhcp_to=199
uri="${LIBVIRT_DEFAULT_URI:-qemu:///system}"
while [ $# -gt 0 ]; do
    case "$1" in
        --name) name="$2"; shift 2 ;;
        --subnet) subnet="$2"; shift 2 ;;
        --bridge) bridge="$2"; shift 2 ;;
        --dhcp-from) dhcp_from="$2"; shift 2 ;;
        --dhcp-to) dhcp_to="$2"; shift 2 ;;
        --connect) uri="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown argument $1" ;;
    esac
done
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$ ]] || die "--name: letters, digits, '-', '_', '.' (at most 50): $name"
virsh_() { virsh -q -c "$uri" "$@"; }

case "$action" in
    create)
        [[ "$subnet" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.0/24$ ]] \
            || die "--subnet: a /24 network such as 192.168.100.0/24, got $subnet"
        prefix="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
        for octet in "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"; do
            [ "$octet" -le 255 ] || die "--subnet: octet $octet out of range"
        done
        [ "$dhcp_from" -ge 2 ] && [ "$dhcp_to" -le 254 ] && [ "$dhcp_from" -le "$dhcp_to" ] \
            || die "--dhcp-from/--dhcp-to: 2 ≤ from ≤ to ≤ 254"
        # Bridge names are at most 15 characters.
        [ -n "$bridge" ] || bridge="virbr-$(printf '%s' "$name" | cksum | cut -d' ' -f1 | cut -c1-8)"
        [ "${#bridge}" -le 15 ] || die "--bridge: at most 15 characters: $bridge"
        if ! virsh_ net-info "$name" >/dev/null 2>&1; then
            xml=$(mktemp)
            trap 'rm -f "$xml"' EXIT
            cat > "$xml" <<EOF
<network>
  <name>$name</name>
  <forward mode='nat'/>
  <bridge name='$bridge' stp='off' delay='0'/>
  <ip address='$prefix.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='$prefix.$dhcp_from' end='$prefix.$dhcp_to'/>
    </dhcp>
  </ip>
</network>
EOF
            virsh_ net-define "$xml" >/dev/null
        fi
        if ! virsh_ net-info "$name" | grep -Eq '^Active:\s+yes'; then
            virsh_ net-start "$name" >/dev/null
        fi
        virsh_ net-autostart "$name" >/dev/null 2>&1 || true
        echo "network $name: $prefix.0/24, host $prefix.1, bridge $(virsh_ net-info "$name" | awk '/^Bridge:/{print $2}')"
        ;;
    destroy)
        if virsh_ net-info "$name" >/dev/null 2>&1; then
            virsh_ net-destroy "$name" >/dev/null 2>&1 || true
            virsh_ net-undefine "$name" >/dev/null
        fi
        echo "network $name: gone"
        ;;
    *) usage ;;
esac
