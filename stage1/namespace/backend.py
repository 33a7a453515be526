"""The namespace stage1 as stage0 sees it: plan the unit, and the --scope and enter paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SpecError
from sdrun.paths import Paths
from sdrun.systemd.propertytable import prop
from stage1 import sealed, write_plan
from stage1.app import resolve_pod_app
from stage1.etcfiles import write_etc_files
from stage1.interface import Stage1, UnitPlan, entry_command
from stage1.namespace.container import (
    DEVICE_ALLOW,
    TINI,
    UserNamespace,
    container_plan,
    plan_file,
    seccomp_filter_path,
    stage1_dir,
    user_namespace_of,
)
from stage1.rootfs import UPPER

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import PodSpec
    from sdrun.systemd.bus import Property
    from stage1.interface import EnterTerminal
    from stage1.process import AppChanges

DEFAULT_STOP_TIMEOUT = 10.0  # seconds, as Docker; systemd's 90 s is long for an app that ignores SIGTERM as PID 1


class Namespace(Stage1, name="namespace"):
    default_network = "default"  # as podman's bridge: an address of its own on sdrun0
    enter_terminal = True  # of the container's devpts: stage1.namespace.enter

    def refuse_unsupported(self, spec: PodSpec) -> None:
        refuse_what_does_not_apply(spec)

    def plan(self, pod: Pod) -> UnitPlan:
        prepare(pod, console=None)  # a service's stdin is /dev/null: no console
        return UnitPlan(*entry_command("stage1.namespace", pod), tuple(unit_properties(pod)))

    def terminal_plan(self, pod: Pod) -> UnitPlan:
        prepare(pod, console=None, terminal=True)
        return UnitPlan(*entry_command("stage1.namespace", pod), tuple(unit_properties(pod)))

    def scope_properties(self, pod: Pod) -> tuple[Property, ...]:
        return (*device_properties(pod), *stop_properties(pod))

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        console = os.ttyname(0) if os.isatty(0) else None  # the terminal the app runs on
        # The container init is a fork of this process: from the sealed interpreter (stage1.sealed).
        sealed.exec_python("stage1.namespace.entry.supervise", [str(prepare(pod, console))])

    def enter(
        self,
        pod: Pod,
        leader: int,
        argv: list[str],
        changes: AppChanges | None = None,
        terminal: EnterTerminal | None = None,
    ) -> NoReturn:
        # What joins the pod runs the sealed interpreter (stage1.sealed): stage0's would be a host file
        # that a `#!/proc/self/exe` command runs inside the pod. The changes and terminal travel as
        # JSON, the terminal's socket as an inherited descriptor.
        import json

        asked = None
        if terminal is not None:
            os.set_inheritable(terminal.channel, True)
            asked = {"channel": terminal.channel, "stdio": list(terminal.stdio)}
        args = [str(pod.dir), str(leader), json.dumps(changes), json.dumps(asked), *argv]
        sealed.exec_python("stage1.namespace.enter.main", args)

    def gc(self, pod: Pod) -> None:
        # Every mount lived in the container's namespaces and went with them; the
        # scratch files (upper layer included) go with the pod directory.
        pass


def unit_properties(pod: Pod) -> list[Property]:
    spec = pod.spec
    properties: list[Property] = [
        prop("Type", "notify"),
        prop("NotifyAccess", "all"),  # MAINPID= comes from the entry, which then exits
        *device_properties(pod),
        *stop_properties(pod),
    ]
    if spec.isolation.selinux_type:
        properties.append(prop("SELinuxContext", spec.isolation.selinux_type))
    if spec.isolation.apparmor:  # (ignore failure, profile)
        properties.append(prop("AppArmorProfile", [False, spec.isolation.apparmor]))
    return properties


def refuse_what_does_not_apply(spec: PodSpec) -> None:
    """:idmap maps a volume's ids through the pod's user namespace: without one there is nothing to
    map them to (the host's ids show already; the kernel refuses to idmap a mount to its own)."""
    if spec.isolation.private_users is None and any(volume.idmap for volume in spec.app.volumes):
        raise SpecError(
            "a volume's :idmap needs --private-users: without a user namespace a volume shows the host's ids",
            hint="drop idmap, or add --private-users",
        )


def device_properties(pod: Pod) -> list[Property]:
    """The device nodes the app may open: the pseudo-devices systemd always allows, DEVICE_ALLOW and
    the pod's --device nodes (by the host's path, which systemd resolves to the node's numbers).
    MKNOD is a default capability: this is what keeps a node of the host's disk closed."""
    allowed = [list(device) for device in DEVICE_ALLOW]
    for text in pod.spec.isolation.device:
        host, _, permissions = text.split(":")
        allowed.append([os.path.realpath(host), permissions])
    return [prop("DevicePolicy", "closed"), prop("DeviceAllow", allowed)]


def stop_properties(pod: Pod) -> list[Property]:
    from sdrun.systemd.properties import stop_properties as timeout_and_signal

    stop_signal = None
    if pod.spec.stop_signal:
        import signal

        stop_signal = int(signal.Signals[pod.spec.stop_signal])
    stop_timeout = DEFAULT_STOP_TIMEOUT if pod.spec.stop_timeout is None else pod.spec.stop_timeout
    return timeout_and_signal(stop_timeout, stop_signal)


def prepare(pod: Pod, console: str | None, *, terminal: bool = False) -> Path:
    """Check the pod, resolve its app, write its scratch files and the entry's plan; raise
    SpecError before any unit exists. Returns the plan file. terminal: the container init gives
    the app a pseudo-terminal of the container's devpts and sends its master on stdin (`run -t`)."""
    spec = pod.spec
    refuse_what_does_not_apply(spec)
    plan = container_plan(pod, console)
    if spec.isolation.init and not Path(TINI).exists():
        raise SpecError(f"--init needs {TINI}", hint="apt-get install tini")
    app = resolve_pod_app(pod)
    user_namespace = user_namespace_of(pod)
    if spec.service.notify and user_namespace is None and app.credentials.uid == 0:
        # systemd takes MAINPID= for any process of the host from a sender of uid 0 (the app could
        # have `sdrun stop` kill a host service, and `enter` join its namespaces): a root app must
        # be root of a user namespace of its own to get the socket.
        raise SpecError(
            "notify = true with the app as root needs --private-users: root on the host could name any "
            "process the unit's main one (MAINPID=)",
            hint="add --private-users, or run the app as another user (--user)",
        )
    scratch = stage1_dir(pod)
    for directory in (scratch, scratch / "upper", scratch / "work", scratch / "rootfs-upper", scratch / "rootfs-work"):
        directory.mkdir(mode=0o755, exist_ok=True)
    if user_namespace is not None:  # container root owns the top of its writable layer
        os.chown(scratch / ("upper" if spec.rootfs else UPPER), user_namespace.base, user_namespace.base)
    write_etc_files(pod, scratch)
    chown_volumes(pod, app.credentials.uid, app.credentials.gid, user_namespace)
    from sdrun.linux import seccomp  # stage0 only: the in-unit entry just reads the compiled program

    compiled = seccomp.compiled_filter(spec.isolation.seccomp, plan.capabilities, Paths.of_pod(pod.dir).seccomp_cache)
    if compiled is not None:
        shutil.copyfile(compiled, seccomp_filter_path(pod))
    path = plan_file(pod)
    write_plan(str(path), plan.entry_plan(app, terminal=terminal))
    return path


def chown_volumes(pod: Pod, uid: int, gid: int, user_namespace: UserNamespace | None) -> None:
    """:U, as podman's: each such volume's source, and everything below it, becomes the app's user's
    and group's as the host sees them (in the pod's range under --private-users). Symbolic links are
    changed themselves, never followed, and the walk stays on the source's file system."""
    base = 0 if user_namespace is None else user_namespace.base
    for volume in pod.spec.app.volumes:
        if volume.chown:  # the source as the bind sees it: through a link the user named
            _chown_tree(os.path.realpath(volume.source), base + uid, base + gid)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    """os.fwalk: every name is changed relative to its directory's descriptor, so that a tree being
    changed meanwhile (another pod sharing the volume) cannot swap a directory for a link out of it."""
    device = os.lstat(top).st_dev
    os.chown(top, uid, gid, follow_symlinks=False)
    for _, subdirectories, files, directory in os.fwalk(top):
        for name in list(subdirectories):
            # A mount below the volume is not the volume's to change. (Only a directory's device
            # tells: an overlay shows a file's as its layer's.)
            if os.stat(name, dir_fd=directory, follow_symlinks=False).st_dev != device:
                subdirectories.remove(name)
        for name in [*subdirectories, *files]:
            os.chown(name, uid, gid, dir_fd=directory, follow_symlinks=False)
