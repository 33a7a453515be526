#!/bin/busybox sh
# sdrun's guest init: PID 1 of the pod's VM (docs/stage1.md, "kvm").
#
# Loads the virtio modules, mounts the pod's root (shared by the host over
# virtiofs, tag "rootfs"), applies the spec that stage0 wrote to fw_cfg
# (opt/sdrun/config), runs the app with its stdout and stderr on the virtio
# console hvc0 (qemu's stdout: the journal), writes its exit status to
# the "sdrun.status" port and powers the VM off. Meanwhile it serves two ports:
# "sdrun.control" (a signal name per line, for the app: `sdrun stop`) and
# "sdrun.agent" (commands of `sdrun enter`). Its own messages go to the serial
# console, which the host keeps in stage1/console.log, out of the app's output.
export PATH=/bin

fail() {
    echo "sdrun guest init: $*"
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The KVM probe (machine.py): this line on the serial console is its proof that the guest
# booted, since qemu exits 0 just the same when the guest panics or triple-faults.
case " $(cat /proc/cmdline) " in *" sdrun.probe "*)
    echo "sdrun probe: the guest init runs"
    poweroff -f
    ;;
esac

while read -r module; do
    insmod "/lib/modules/$module.ko" || fail "cannot load module $module"
done </lib/modules/load-order

config=/sys/firmware/qemu_fw_cfg/by_name/opt/sdrun/config/raw
[ -r "$config" ] || fail "no pod configuration in fw_cfg"
. "$config"

# The host adds the ports after the driver has probed: wait for each by name (with
# builtins only: every fork and exec is slow under TCG).
port() {
    tries=0
    while [ "$tries" -lt 500 ]; do
        for entry in /sys/class/virtio-ports/*; do
            read -r name <"$entry/name" 2>/dev/null && [ "$name" = "$1" ] && echo "/dev/${entry##*/}" && return
        done
        tries=$((tries + 1))
        sleep 0.01
    done
    fail "virtio port $1 did not appear"
}
output=/dev/hvc0 # the one virtio console
status=$(port sdrun.status)
control=$(port sdrun.control)
agent=$(port sdrun.agent)

root=/root
mount -t virtiofs rootfs "$root" || fail "cannot mount the pod's root"
for api in proc sys dev; do
    [ -d "$root/$api" ] || mkdir "$root/$api" 2>/dev/null || continue
    mount --rbind "/$api" "$root/$api"
done
mkdir -p "$root/dev/pts" "$root/dev/shm" 2>/dev/null
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm" 2>/dev/null
eval "set -- $SDRUN_TMPFS"
for tmpfs in "$@"; do
    target=$root${tmpfs%%:*} options=${tmpfs#*:}
    [ "$options" = "$tmpfs" ] && options=""
    mkdir -p "$target" && mount -t tmpfs -o "nosuid,nodev,mode=1777${options:+,$options}" tmpfs "$target" ||
        fail "cannot mount a tmpfs on ${tmpfs%%:*}"
done
hostname "$SDRUN_HOSTNAME"
ip link set lo up
if [ -n "$SDRUN_NET_ADDRESS" ]; then # the NIC has the MAC, address and route of the pod's interface
    ip link set eth0 up && ip address add "$SDRUN_NET_ADDRESS" dev eth0 || fail "cannot configure eth0"
    [ -z "$SDRUN_NET_GATEWAY" ] || ip route add default via "$SDRUN_NET_GATEWAY" || fail "no route via $SDRUN_NET_GATEWAY"
fi
eval "set -- $SDRUN_SYSCTL"
for sysctl in "$@"; do # PATH=VALUE, PATH under /proc/sys: --sysctl
    printf '%s\n' "${sysctl#*=}" >"/proc/sys/${sysctl%%=*}" || fail "cannot set sysctl ${sysctl%%=*}"
done

# Exec the command $1 (shell-quoted words) as the app runs: only the spec's environment,
# chrooted into the pod's root, in its working directory, as its uid and gid (nsenter's
# -r, -w, -S and -G do the last three; it drops supplementary groups).
in_container() {
    eval "exec env -i $SDRUN_ENV /bin/busybox nsenter \"-r\$root\" \"-w\$root\$SDRUN_WORKDIR\" \
        -S \"\$SDRUN_UID\" -G \"\$SDRUN_GID\" -F -- $1"
}

# sdrun.control: a signal name per line, for the app (the host's `sdrun stop` and forwarded signals).
while read -r signal; do
    kill -s "$signal" "$(cat /run/app.pid)" 2>/dev/null
done <"$control" &

# sdrun.agent: `sdrun enter` sends "NONCE BASE64-OF-QUOTED-ARGV"; we answer "NONCE", the
# command's output, then "\nNONCE:STATUS". The nonce lets the host skip what an
# interrupted earlier session left in the pipe.
(
    exec 3<>"$agent"
    while read -r nonce request <&3; do
        printf '%s\n' "$nonce" >&3
        (in_container "$(echo "$request" | base64 -d)") </dev/null >&3 2>&3
        printf '\n%s:%s\n' "$nonce" "$?" >&3
    done
) &

# The app runs in the foreground (a background job would ignore SIGINT), in a subshell
# that records its pid for the control loop, then becomes the app.
(
    read -r pid _ </proc/self/stat && echo "$pid" >/run/app.pid
    in_container "$SDRUN_ARGV"
) </dev/null >"$output" 2>&1 && app_status=0 || app_status=$?
echo "$app_status" >"$status"
sync
poweroff -f
