"""The fly stage1: chroot only, for privileged system apps (as rkt's stage1-fly).

No namespaces but a private mount namespace, so that its bind mounts never
show on the host: bind the host's /proc, /sys and /dev and the volumes into
the rootfs, chroot, drop to the app's user, exec. Nothing of sdrun stays
resident.

stage0's planner (backend.py) resolves everything against the rootfs and
writes it to the pod's stage1/fly.plan; the unit's entry (entry.py, run as
`python -m stage1.fly run --interface=1 POD_DIR`) only carries that out, so it
imports almost nothing: its start-up is on the path of every container start.

systemd's own RootDirectory=/BindPaths= would spare the Python start, but in
systemd 252 they also apply to ExecStopPost= (even a privileged `+` one),
which must see the host to record the exit status in the pod directory.
"""
