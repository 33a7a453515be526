"""The fly stage1: chroot only, for privileged system apps (as rkt's stage1-fly).

No namespaces but a private mount namespace, so that its bind mounts never
show on the host: bind the host's /proc, /sys and /dev and the volumes into
the rootfs, chroot, drop to the app's user, exec. The unit runs this module
(`python -m stage1.fly run POD_DIR`), which execs into the app: nothing of
sdrun stays resident.

systemd's own RootDirectory=/BindPaths= would spare the Python start, but in
systemd 252 they also apply to ExecStopPost= (even a privileged `+` one),
which must see the host to record the exit status in the pod directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SpecError
from sdrun.linux import syscalls as sc
from sdrun.linux.mounts import BindMount, MountOperation, execute_plan
from stage1 import Stage1, UnitPlan, entry_command
from stage1.app import SystemdNotifier, exec_app, resolve_app

if TYPE_CHECKING:
    from sdrun.pod import Pod

HOST_API_FILESYSTEMS = ("/proc", "/sys", "/dev")


def _rootfs(pod: Pod) -> Path:
    assert pod.spec.rootfs is not None, "fly runs a rootfs directory"
    return Path(pod.spec.rootfs)


class Fly(Stage1, name="fly"):
    def plan(self, pod: Pod) -> UnitPlan:
        resolve_app(_rootfs(pod), pod.spec.app)  # fail now, with a clear error, rather than inside the unit
        if pod.spec.service.notify:
            raise SpecError("notify = true needs the namespace stage1: a chroot cannot reach systemd's socket")
        # Type=notify: the entry says READY=1 just before it execs the app, so `sdrun run -d`
        # returns once the app, not the stage1, is what runs (Type=exec would return a step early).
        properties = (("Type", "s", "notify"), ("NotifyAccess", "s", "main"))
        return UnitPlan(*entry_command("stage1.fly", pod), properties)

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        become_app(pod)

    def enter(self, pod: Pod, leader: int, argv: list[str]) -> NoReturn:
        app = resolve_app(_rootfs(pod), pod.spec.app)
        root_fd = os.open(f"/proc/{leader}/root", os.O_PATH | os.O_DIRECTORY)
        namespace = os.open(f"/proc/{leader}/ns/mnt", os.O_RDONLY)
        sc.setns(namespace, sc.CLONE_NEWNS)
        os.fchdir(root_fd)
        os.chroot(".")
        exec_app(app, tuple(argv))


def become_app(pod: Pod) -> NoReturn:
    rootfs = _rootfs(pod)
    app = resolve_app(rootfs, pod.spec.app)
    notifier = SystemdNotifier()
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # host mounts still reach us; ours stay here
    plan: list[MountOperation] = [BindMount(path, path) for path in HOST_API_FILESYSTEMS]
    plan += [BindMount(volume.source, volume.target, volume.read_only) for volume in pod.spec.app.volumes]
    execute_plan(plan, rootfs)
    os.chroot(rootfs)
    notifier.notify("READY=1")
    exec_app(app)
