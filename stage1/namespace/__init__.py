"""The namespace stage1: nspawn-like isolation with secure defaults and no resident helper.

stage0's planner (backend.py) checks what can be checked before the unit exists,
resolves the app, writes the pod's scratch files (hostname, hosts, resolv.conf,
the compiled seccomp filter, the overlay's upper layer) and the entry's plan
(stage1/namespace.plan), and returns a Type=notify unit. Its entry (entry.py,
run as `python -m stage1.namespace run --interface=1 POD_DIR`) carries the plan
out and hands systemd the container's init as MainPID; it imports almost
nothing, as its start-up is on the path of every container start.

What systemd can enforce without hampering that set-up, it enforces:
DevicePolicy=closed with the minimal /dev, KillSignal=, TimeoutStopSec=,
SELinuxContext=, AppArmorProfile=. Capabilities, no_new_privs and seccomp are
applied in-process right before the exec (as runc does), since
CapabilityBoundingSet= or SystemCallFilter= would also bind the entry that has
to mount and unshare.
"""
