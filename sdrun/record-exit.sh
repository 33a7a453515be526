#!/bin/sh
# record-exit.sh FILE: a pod unit's ExecStopPost=, which records how the app ended in FILE for
# `sdrun list` (the unit may be collected by then): systemd's SERVICE_RESULT, EXIT_CODE and
# EXIT_STATUS on one line. A script of its own, because a command line with `$` in it does not
# survive systemd 252's daemon-reload (docs/units.md). One write of a few bytes, no temporary file
# and rename: a reader that catches it half-written sees fewer than three fields and takes the
# record as absent (Pod.exit_record), as it does when the app never started (no variables).
result=$SERVICE_RESULT
# systemd tells an OOM kill (oom-kill) from cgroup v2's memory.events only: with the memory
# controller on v1 (a hybrid host) it says signal, and the unit's v1 memory cgroup, still there
# while ExecStopPost= runs in it, counts the kill in memory.oom_control.
if [ "$result $EXIT_STATUS" = "signal KILL" ]; then
    memory=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
    if grep -qs '^oom_kill [1-9]' "/sys/fs/cgroup/memory$memory/memory.oom_control"; then
        result=oom-kill
    fi
fi
echo "$result $EXIT_CODE $EXIT_STATUS" > "$1"
