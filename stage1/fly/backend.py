"""The fly stage1 as stage0 sees it: plan the unit, and the --scope and enter paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SpecError
from sdrun.linux import syscalls as sc
from sdrun.paths import Paths
from sdrun.settings import not_honoured
from sdrun.spec import SETTINGS_TABLE
from sdrun.systemd.propertytable import prop
from stage1 import INTERFACE_VERSION, read_plan
from stage1 import write_plan as write_entry_plan
from stage1.app import ResolvedApp, exec_app, resolve_pod_app
from stage1.fly import entry
from stage1.fly.native import native_obstacle, native_plan
from stage1.interface import Stage1, UnitPlan, entry_command, refuse_flags
from stage1.process import changed_app

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import PodSpec
    from stage1.fly.entry import Plan
    from stage1.interface import EnterTerminal
    from stage1.process import AppChanges


class Fly(Stage1, name="fly"):
    default_network = "host"  # chroot only: the app shares the host's network, and no other can be had

    def refuse_unsupported(self, spec: PodSpec) -> None:
        refuse_what_does_not_apply(spec)

    def plan(self, pod: Pod) -> UnitPlan:
        refuse_what_does_not_apply(pod.spec)
        app = resolve_pod_app(pod)  # before the unit exists: a bad command or user fails here
        write_plan(pod, app)  # for the entry, and for `enter`, which runs as the app does
        if pod.spec.rootfs is not None and native_obstacle(pod, app) is None:
            return native_plan(pod.spec.rootfs, app)  # no stage1 process: systemd sets the app up
        # The other pods (image pods, volumes...: native_obstacle says why) keep the Python entry.
        # Type=notify: the entry says READY=1 just before it execs the app, so `sdrun run -d`
        # returns once the app, not the stage1, is what runs (Type=exec would return a step early).
        properties = (prop("Type", "notify"), prop("NotifyAccess", "main"))
        return UnitPlan(*entry_command("stage1.fly", pod), properties)

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        entry.become_app(read_plan(str(write_plan(pod))))

    def enter(
        self,
        pod: Pod,
        leader: int,
        argv: list[str],
        changes: AppChanges | None = None,
        terminal: EnterTerminal | None = None,  # never given: enter_terminal is False, stage0 makes one
    ) -> NoReturn:
        # The app as planned: the root it sees now is the app's to change (its /etc/passwd among it).
        plan: Plan = read_plan(str(plan_file(pod)))
        app = ResolvedApp.from_plan_fields(changed_app(plan["app"], changes))
        root_fd = os.open(f"/proc/{leader}/root", os.O_PATH | os.O_DIRECTORY)
        namespace = os.open(f"/proc/{leader}/ns/mnt", os.O_RDONLY)
        sc.setns(namespace, sc.CLONE_NEWNS)
        os.fchdir(root_fd)
        os.chroot(".")
        exec_app(app, tuple(argv))


def refuse_what_does_not_apply(spec: PodSpec) -> None:
    """fly is a chroot with the host's privileges: an isolation flag would be a promise it does not
    keep, so it is refused, not ignored."""
    if spec.net != "host":
        raise SpecError(f"--net {spec.net} needs network isolation: fly shares the host's (--net host)")
    if spec.service.notify:
        raise SpecError("notify = true needs the namespace stage1: a chroot cannot reach systemd's socket")
    given = not_honoured(spec, SETTINGS_TABLE, "fly")
    given["--seccomp"] = spec.isolation.seccomp not in ("default", "unconfined")  # unconfined is what fly is
    given["a volume's :U"] = any(volume.chown for volume in spec.app.volumes)
    given["a volume's :idmap"] = any(volume.idmap for volume in spec.app.volumes)
    why = "needs the namespace stage1: fly runs the app in a chroot with the host's privileges"
    refuse_flags(given, why, hint="--stage1 namespace")


def plan_file(pod: Pod) -> Path:
    """What stage0 planned for the entry (and for `enter`): entry.PLAN_FILE in the stage1 directory."""
    return Paths.stage1_dir(pod.dir) / entry.PLAN_FILE


def write_plan(pod: Pod, app: ResolvedApp | None = None) -> Path:
    """Everything the entry needs, resolved: it reads this instead of the pod manifest. An image
    pod's root is an overlay of its layer trees, which the entry mounts (rootfs_overlay)."""
    if app is None:
        app = resolve_pod_app(pod)
    overlay = None
    if pod.spec.rootfs is None:
        from stage1.rootfs import pod_overlay

        target, options = pod_overlay(pod)
        overlay = (str(target), options)
    plan: Plan = {
        "interface": INTERFACE_VERSION,
        "rootfs": pod.spec.rootfs,
        "rootfs_overlay": overlay,
        "app": app.plan_fields(),
        "binds": [(path, path, False) for path in entry.HOST_API_FILESYSTEMS]
        + [(volume.source, volume.target, volume.read_only) for volume in pod.spec.app.volumes],
    }
    path = plan_file(pod)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_entry_plan(str(path), plan)
    return path
