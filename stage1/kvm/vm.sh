#!/bin/sh
# The kvm pod's main process while its VM runs: vm.sh STOP_SIGNAL QEMU [ARGS...]
#
# Run in the pod's stage1 directory by the entry (stage1/kvm/entry.py), which
# execs it: no Python stays resident. It exists for two things qemu cannot do:
# - exit with the app's exit status, which the guest init writes to the
#   "status" file (the sdrun.status port); qemu itself exits 0 at power-off;
# - turn the signals systemd and `sdrun run` send the main process (the unit
#   has KillMode=mixed) into signals for the app in the guest, through the
#   "control.in" pipe (the sdrun.control port). SIGTERM, systemd's stop signal,
#   becomes the pod's --stop-signal. The app then ends, and the guest powers off.
stop_signal=$1
shift

exec 3<>control.in # read-write: never blocks, even once qemu is gone
trap 'echo "$stop_signal" >&3' TERM
trap 'echo INT >&3' INT
trap 'echo HUP >&3' HUP

"$@" &
qemu=$!
# wait returns early when a trapped signal arrives: wait again until qemu has gone.
while :; do
    wait "$qemu"
    qemu_status=$?
    kill -0 "$qemu" 2>/dev/null || break
done

read -r app_status <status 2>/dev/null
case $app_status in
'' | *[!0-9]*) ;; # none, or not a number: the guest is not to be trusted with our exit
*) exit "$app_status" ;;
esac
if [ "$qemu_status" -gt 128 ]; then # qemu was killed (sdrun kill): say so as the app would
    exit "$qemu_status"
fi
echo "sdrun kvm: the VM stopped before its app reported an exit status (qemu exited $qemu_status;" \
    "the guest console is in $PWD/console.log)" >&2
exit 125
