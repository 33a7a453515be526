"""The fly stage1: chroot only, for privileged system apps (as rkt's stage1-fly).

No namespaces but a private mount namespace, so that its bind mounts never
show on the host: bind the host's /proc, /sys and /dev and the volumes into
the rootfs, chroot, drop to the app's user, exec. Nothing of sdrun stays
resident.

stage0's planner (backend.py) resolves the app against the rootfs before the
unit exists. For a --rootfs pod, systemd does the rest with no stage1 process
(native.py: RootDirectory=, BindPaths=, User=...; the unit's ExecStart= is the
app). The other pods (image pods, whose overlay only a process in the unit can
mount, pods with volumes: native.native_obstacle says why) get the plan in the
pod's stage1/fly.plan, and the unit's entry (entry.py, run as
`python -m stage1.fly run --interface=1 POD_DIR`) only carries it out, so it
imports almost nothing: its start-up is on the path of every container start.
"""
