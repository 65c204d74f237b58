#!/usr/bin/env bash
# Creates and removes Diplo host VMs with virt-install.
#
#   deploy/libvirt/vm.sh create NAME [--network diplo-so1 | --bridge BR] [--memory MiB] [--vcpus N]
#                        [--mac 52:54:00:..] [--ip A.B.C.D]
#                        [--virt-type auto|kvm|qemu] [--osinfo linux2022] [--console-log FILE]
#                        [--connect URI]
#                        (direct kernel boot)
#                        --kernel VMLINUZ --initrd INITRD [--kernel-args "..."]
#                        [--server HOST:PORT] [--token DIPLO1::...]
#                        (or a cloud image with cloud-init)
#                        --image BASE.qcow2 [--disk-size 10G] [--pool-dir DIR]
#                        [--cloud-init USER-DATA] [--meta-data FILE] [--network-config FILE]
#   deploy/libvirt/vm.sh destroy NAME [--keep-disk] [--connect URI]
#
# Direct kernel boot runs the image scripts/vm-image builds (kernel + initramfs, no disk):
# --server/--token/--ip/NAME become diplo.server=, diplo.token=, diplo.ip=, diplo.name= on
# the kernel command line, which the image's init reads. A cloud image gets a copy-on-write
# disk over BASE (NAME.qcow2 in --pool-dir, default /var/lib/libvirt/images) and the
# cloud-init user-data given (deploy/cloud-init/). --ip pins the address with a DHCP
# reservation for --mac (derived from NAME when not given) in the libvirt network.
#
# --bridge BR attaches the VM to an existing Linux bridge instead of a libvirt network
# (--network and --bridge exclude each other). Nobody serves DHCP there for libvirt: --ip
# only goes on the kernel command line (direct kernel boot; gateway: the /24's .1), and
# must be in the bridge's /24 when the bridge has an IPv4 address.
#
# --virt-type auto (the default) uses KVM only when /dev/kvm is usable and a bounded probe
# boots a kernel (--kernel, else the host's newest /boot/vmlinuz-*) to its first panic under
# KVM within 20 s (KVM that hangs is not used); otherwise QEMU's TCG emulation (slow but
# works everywhere). kvm or qemu forces one.
#
# destroy stops and undefines the VM, removes its DHCP reservation and its disk (unless
# --keep-disk); a VM that does not exist is not an error.
set -euo pipefail

die() { echo "vm.sh: $*" >&2; exit 1; }
usage() { sed -n '4,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
action="$1"; name="$2"; shift 2
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$ ]] || die "NAME: letters, digits, '-', '_', '.' (at most 50): $name"

network="diplo-so1"; network_given=0; bridge=""; osinfo=linux2022; memory=1024; vcpus=1; mac=""; ip=""; virt_type=auto; console_log=""
kernel=""; initrd=""; kernel_args=""; server=""; token=""
image=""; disk_size=10G; pool_dir=/var/lib/libvirt/images; user_data=""; meta_data=""; network_config=""
keep_disk=0
uri="${LIBVIRT_DEFAULT_URI:-qemu:///system}"
while [ $# -gt 0 ]; do
    case "$1" in
        --network) network="$2"; network_given=1; shift 2 ;;
        --bridge) bridge="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --osinfo) osinfo="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --mac) mac="$2"; shift 2 ;;
        --ip) ip="$2"; shift 2 ;;
        --virt-type) virt_type="$2"; shift 2 ;;
        --console-log) console_log="$2"; shift 2 ;;
        --connect) uri="$2"; shift 2 ;;
        --kernel) kernel="$2"; shift 2 ;;
        --initrd) initrd="$2"; shift 2 ;;
        --kernel-args) kernel_args="$2"; shift 2 ;;
        --server) server="$2"; shift 2 ;;
        --token) token="$2"; shift 2 ;;
        --image) image="$2"; shift 2 ;;
        --disk-size) disk_size="$2"; shift 2 ;;
        --pool-dir) pool_dir="$2"; shift 2 ;;
        --cloud-init) user_data="$2"; shift 2 ;;
        --meta-data) meta_data="$2"; shift 2 ;;
        --network-config) network_config="$2"; shift 2 ;;
        --keep-disk) keep_disk=1; shift ;;
        -h|--help) usage ;;
        *) die "unknown argument $1" ;;
    esac
done
virsh_() { virsh -q -c "$uri" "$@"; }

# The network's /24 prefix (A.B.C) from its first IPv4 address.
net_prefix() {
    virsh_ net-dumpxml "$network" | sed -n "s/.*<ip address='\([0-9.]*\)'.*/\1/p" | head -1 | cut -d. -f1-3
}

# KVM when /dev/kvm works and boots the kernel (if given) within a bound; else TCG.
choose_virt_type() {
    case "$virt_type" in
        kvm|qemu) echo "$virt_type"; return ;;
        auto) ;;
        *) die "--virt-type: auto, kvm or qemu, got $virt_type" ;;
    esac
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ] || ! virsh_ domcapabilities --virttype kvm >/dev/null 2>&1; then
        echo qemu; return
    fi
    # The probe boots a kernel: the VM's own, else the host's newest in /boot.
    local probe="$kernel"
    [ -n "$probe" ] || probe=$(ls -1t /boot/vmlinuz-* 2>/dev/null | head -1)
    if [ -n "$probe" ] && [ -r "$probe" ]; then
        # Without a root file system the kernel panics at once; panic=-1 reboots and
        # -no-reboot ends QEMU. A KVM that hangs never gets there.
        if timeout 20 qemu-system-x86_64 -accel kvm -m 256 -nodefaults -display none -no-reboot \
            -serial stdio -kernel "$probe" -append "console=ttyS0 panic=-1" 2>/dev/null | grep -qm1 'Kernel panic'; then
            echo kvm
        else
            echo "vm.sh: KVM did not boot the kernel within 20 s: using TCG" >&2
            echo qemu
        fi
        return
    fi
    echo kvm
}

case "$action" in
    create)
        [[ "$memory" =~ ^[0-9]+$ ]] && [ "$memory" -ge 128 ] || die "--memory: MiB, at least 128: $memory"
        [[ "$vcpus" =~ ^[0-9]+$ ]] && [ "$vcpus" -ge 1 ] || die "--vcpus: a positive number: $vcpus"
        if [ -n "$bridge" ]; then
            [ "$network_given" = 0 ] || die "--bridge and --network exclude each other"
            [[ "$bridge" =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "--bridge: an interface name (at most 15 characters), got $bridge"
        fi
        case "$virt_type" in auto|kvm|qemu) ;; *) die "--virt-type: auto, kvm or qemu, got $virt_type" ;; esac
        if [ -z "$mac" ]; then
            h=$(printf '%s' "$name" | sha256sum)
            mac="52:54:00:${h:0:2}:${h:2:2}:${h:4:2}"
        fi
        [[ "$mac" =~ ^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$ ]] || die "--mac: six hex pairs, got $mac"
        if [ -n "$ip" ]; then
            [[ "$ip" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--ip: an IPv4 address without prefix, got $ip"
        fi
        # Both end up on the kernel command line, where a space starts another argument.
        server_re='^[][A-Za-z0-9:._-]*$'
        token_re='^[A-Za-z0-9:._+/=-]*$'
        [[ "$server" =~ $server_re ]] || die "--server: HOST:PORT without spaces, got $server"
        [[ "$token" =~ $token_re ]] || die "--token: a join token (DIPLO1::…) without spaces"
        [ -z "$kernel" ] || [ -f "$kernel" ] || die "--kernel: no file $kernel"
        [ -z "$image" ] || [ -f "$image" ] || die "--image: no file $image"
        virsh_ dominfo "$name" >/dev/null 2>&1 && die "a VM named $name exists (vm.sh destroy $name first)"
        if [ -n "$bridge" ]; then
            [ -d "/sys/class/net/$bridge/bridge" ] || die "--bridge: no Linux bridge $bridge"
            [ -z "$image" ] || [ -z "$ip" ] || die "--ip with --bridge needs direct kernel boot (--kernel): nobody serves DHCP on $bridge"
            if [ -n "$ip" ]; then
                prefix=$(ip -4 -o addr show dev "$bridge" | awk '{print $4}' | head -1 | cut -d. -f1-3)
                [ -z "$prefix" ] || [ "${ip%.*}" = "$prefix" ] || die "--ip: $ip is not in bridge $bridge's network ($prefix.0/24)"
            fi
            nic="bridge=$bridge,mac=$mac,model=virtio"
        else
            virsh_ net-info "$network" >/dev/null 2>&1 || die "--network: no libvirt network $network (deploy/libvirt/network.sh create)"
            nic="network=$network,mac=$mac,model=virtio"
        fi
        if [ -n "$ip" ] && [ -z "$bridge" ]; then
            prefix=$(net_prefix)
            [ "${ip%.*}" = "$prefix" ] || die "--ip: $ip is not in network $network ($prefix.0/24)"
            virsh_ net-update "$network" add ip-dhcp-host "<host mac='$mac' name='$name' ip='$ip'/>" --live --config >/dev/null
        fi
        vt=$(choose_virt_type)
        args=(--connect "$uri" --name "$name" --memory "$memory" --vcpus "$vcpus" --virt-type "$vt"
              --network "$nic" --rng /dev/urandom
              --graphics none --noautoconsole --osinfo "$osinfo")
        if [ -n "$console_log" ]; then
            args+=(--serial "file,path=$console_log")
        else
            args+=(--serial pty)
        fi
        if [ -n "$kernel" ]; then
            [ -f "$kernel" ] || die "--kernel: no file $kernel"
            [ -n "$initrd" ] && [ -f "$initrd" ] || die "--initrd: a file is needed with --kernel"
            [ -n "$image" ] && die "--kernel and --image exclude each other"
            cmdline="console=ttyS0 panic=-1 $kernel_args diplo.name=$name"
            [ -n "$server" ] && cmdline+=" diplo.server=$server"
            [ -n "$token" ] && cmdline+=" diplo.token=$token"
            [ -n "$ip" ] && cmdline+=" diplo.ip=$ip/24 diplo.gw=${ip%.*}.1"
            args+=(--boot "kernel=$(readlink -f "$kernel"),initrd=$(readlink -f "$initrd"),kernel_args=$cmdline"
                   --import --disk none --events on_reboot=destroy,on_poweroff=destroy)
        elif [ -n "$image" ]; then
            [ -f "$image" ] || die "--image: no file $image"
            disk="$pool_dir/$name.qcow2"
            [ -e "$disk" ] && die "$disk exists (vm.sh destroy $name, or remove it)"
            mkdir -p "$pool_dir"
            qemu-img create -q -f qcow2 -F "$(qemu-img info --output=json "$image" | sed -n 's/.*"format": "\([a-z0-9]*\)".*/\1/p' | head -1)" \
                -b "$(readlink -f "$image")" "$disk" "$disk_size"
            args+=(--import --disk "path=$disk,format=qcow2,bus=virtio")
            if [ -n "$user_data" ]; then
                [ -f "$user_data" ] || die "--cloud-init: no file $user_data"
                ci="user-data=$(readlink -f "$user_data")"
                [ -n "$meta_data" ] && ci+=",meta-data=$(readlink -f "$meta_data")"
                [ -n "$network_config" ] && ci+=",network-config=$(readlink -f "$network_config")"
                args+=(--cloud-init "$ci")
            fi
        else
            die "give --kernel/--initrd (direct kernel boot) or --image (a cloud image)"
        fi
        virt-install "${args[@]}" >/dev/null
        attached="network $network"
        [ -z "$bridge" ] || attached="bridge $bridge"
        echo "vm $name: $vt, ${memory} MiB, $vcpus vCPU, mac $mac${ip:+, ip $ip}, $attached"
        ;;
    destroy)
        if virsh_ dominfo "$name" >/dev/null 2>&1; then
            # Only interfaces on a libvirt network have reservations (not those on a bridge).
            macs=$(virsh_ domiflist "$name" 2>/dev/null | awk '$2 == "network" {print $5, $3}' || true)
            virsh_ destroy "$name" >/dev/null 2>&1 || true
            virsh_ undefine "$name" --nvram >/dev/null 2>&1 || virsh_ undefine "$name" >/dev/null
            # Drop the DHCP reservations made for its interfaces.
            while read -r m net; do
                [ -n "$m" ] || continue
                host=$(virsh_ net-dumpxml "$net" 2>/dev/null | grep -i "<host mac='$m'" | head -1 | sed 's/^ *//' || true)
                [ -n "$host" ] && virsh_ net-update "$net" delete ip-dhcp-host "$host" --live --config >/dev/null 2>&1 || true
            done <<< "$macs"
        fi
        if [ "$keep_disk" = 0 ] && [ -f "$pool_dir/$name.qcow2" ]; then
            rm -f "$pool_dir/$name.qcow2"
        fi
        echo "vm $name: gone"
        ;;
    *) usage ;;
esac
