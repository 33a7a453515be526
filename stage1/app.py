"""The app as a stage1 runs it: spec values resolved against the container's tree, before any unit exists.

stage0 resolves the app (executable, user, workdir) and a stage1 entry only
carries out the result: errors come before the unit exists, and the entry
inside the unit imports none of this.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from sdrun.errors import SdrunError, SpecError, describe
from sdrun.linux import syscalls as sc
from sdrun.linux.rootfs import (
    Credentials,
    find_executable,
    is_directory_in_root,
    resolve_user,
    why_not_executable,
)
from sdrun.paths import Paths
from sdrun.spec import DEFAULT_PATH, UNLIMITED, AppSpec, Volume
from stage1.process import Identity, exec_as

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from stage1.process import AppChanges, AppPlan


class ResolvedApp(NamedTuple):
    executable: str  # absolute path inside the rootfs
    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    credentials: Credentials
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard), -1 for no limit

    def plan_fields(self) -> AppPlan:
        """The app as plain values, for the plan file a stage1 entry reads (stage1.process.exec_planned)."""
        credentials = self.credentials
        return {
            "executable": self.executable,
            "argv": list(self.argv),
            "env": self.env,
            "workdir": self.workdir,
            "uid": credentials.uid,
            "gid": credentials.gid,
            "groups": list(credentials.groups),
            "rlimits": list(self.rlimits),
        }

    @classmethod
    def from_plan_fields(cls, fields: AppPlan) -> ResolvedApp:
        credentials = Credentials(fields["uid"], fields["gid"], tuple(fields["groups"]), fields["env"].get("HOME", "/"))
        rlimits = tuple((number, soft, hard) for number, soft, hard in fields.get("rlimits", ()))
        return cls(fields["executable"], tuple(fields["argv"]), fields["env"], fields["workdir"], credentials, rlimits)


class ContainerTree:
    """The files the app will see: the rootfs with the volumes over it. A stage1 may mount the
    volumes after the app is resolved, so a path under a volume's target is looked up in its source."""

    def __init__(self, rootfs: Path, volumes: tuple[Volume, ...]) -> None:
        self.rootfs = rootfs
        self.volumes = volumes

    def locate(self, path: str) -> tuple[Path, str]:
        """The tree and the path in it that `path` is in the container: the deepest volume whose
        target holds it, else the rootfs."""
        holders = [volume for volume in self.volumes if path == volume.target or path.startswith(volume.target + "/")]
        if not holders:
            return self.rootfs, path
        volume = max(holders, key=lambda item: len(item.target))
        source = Path(volume.source)
        if path == volume.target and not source.is_dir():  # a file bound on its own: look in its directory
            return source.parent, "/" + source.name
        return source, "/" + path.removeprefix(volume.target).lstrip("/")

    def why_not_executable(self, path: str) -> str | None:
        return why_not_executable(*self.locate(path))

    def is_directory(self, path: str) -> bool:
        return is_directory_in_root(*self.locate(path))


def resolve_app(rootfs: Path, app: AppSpec, default_argv: tuple[str, ...] = ()) -> ResolvedApp:
    argv = app.argv or default_argv
    if not argv:
        raise SpecError("no command given", hint="add one after '--', e.g. sdrun run --rootfs DIR -- /bin/sh")
    tree = ContainerTree(rootfs, app.volumes)
    credentials = resolve_user(rootfs, app.user)
    env = {"HOME": credentials.home} | app.env
    executable = find_executable(argv[0], env.get("PATH", DEFAULT_PATH), tree.why_not_executable)
    workdir = app.workdir or "/"
    if not tree.is_directory(workdir):
        raise SpecError(f"working directory '{workdir}' does not exist in the container")
    return ResolvedApp(executable, argv, env, workdir, credentials, resource_limits(app.ulimits))


def resource_limits(ulimits: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """--ulimit NAME=SOFT:HARD (as sdrun.spec.parse_ulimit writes them) as setrlimit(2) arguments.
    A hard nofile limit above the kernel's fs.nr_open would fail in the unit: refuse it here."""
    limits = []
    for text in ulimits:
        name, _, values = text.partition("=")
        soft, hard = (sc.RLIM_INFINITY if value == UNLIMITED else int(value) for value in values.split(":"))
        if name == "nofile" and (hard == sc.RLIM_INFINITY or hard > _nr_open()):
            raise SpecError(f"ulimit '{text}': the kernel allows at most {_nr_open()} open files (fs.nr_open)")
        limits.append((sc.RLIMIT_NAMES.index(name), soft, hard))
    return tuple(limits)


def _nr_open() -> int:
    return int(Path("/proc/sys/fs/nr_open").read_text())


def resolve_pod_app(pod: Pod) -> ResolvedApp:
    """The pod's app, resolved against the root it will run in. An image pod's root is an overlay
    of its layer trees that only its unit mounts: for the lookup, a forked child mounts them
    read-only in a private mount namespace of its own."""
    if pod.spec.rootfs:
        return resolve_app(Path(pod.spec.rootfs), pod.spec.app)
    from stage1.rootfs import image_lowers

    lowers = image_lowers(pod)
    mountpoint = Paths.stage1_dir(pod.dir) / "lookup"
    mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)
    return ResolvedApp.from_plan_fields(_in_private_mount(lowers, mountpoint, pod.spec.app))


def _in_private_mount(lowers: list[str], mountpoint: Path, app: AppSpec) -> AppPlan:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports through the pipe and never returns
        os.close(read_end)
        with os.fdopen(write_end, "wb") as stream:
            stream.write(marshal.dumps(_resolve_in_child(lowers, mountpoint, app)))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        answer = stream.read()
    os.waitpid(child, 0)
    try:
        kind, value, hint = marshal.loads(answer)
    except (EOFError, ValueError, TypeError):
        raise SdrunError("resolving the app in the image failed") from None
    if kind == "error":
        raise SpecError(value, hint=hint)
    fields: AppPlan = value
    return fields


def _resolve_in_child(lowers: list[str], mountpoint: Path, app: AppSpec) -> tuple[str, Any, str | None]:
    try:
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        if len(lowers) == 1:  # overlayfs without an upper layer wants two lowers at least
            sc.mount(lowers[0], mountpoint, None, sc.MS_BIND)
        else:
            from stage1.rootfs import overlay_options

            sc.mount("overlay", mountpoint, "overlay", sc.MS_RDONLY, overlay_options(lowers))
        return "app", resolve_app(mountpoint, app).plan_fields(), None
    except SdrunError as error:
        return "error", error.message, error.hint
    except BaseException as error:  # noqa: BLE001 - a forked child: report, never return to the caller
        return "error", describe(error), None


def exec_app(
    app: ResolvedApp, argv: tuple[str, ...] | None = None, before_exec: Callable[[], None] | None = None
) -> NoReturn:
    """Become the app: drop to its credentials, enter its workdir, exec. Called after chroot/pivot_root.
    before_exec runs as the app's user right before the exec (a stage1 loads its seccomp filter there)."""
    for number, soft, hard in app.rlimits:
        sc.setrlimit(number, soft, hard)
    credentials = app.credentials
    command = argv or app.argv
    executable = app.executable if argv is None else command[0]
    identity = Identity(credentials.uid, credentials.gid, credentials.groups)
    exec_as(identity, app.workdir, executable, command, app.env, before_exec)


def enter_changes(root: Path, user: str | None, env: dict[str, str], workdir: str | None) -> AppChanges:
    """The changes of enter's -u, -e and -w; USER[:GROUP] as `run -u` reads it, from the pod's
    root as it is now (root: /proc/LEADER/root), and HOME with it unless -e sets it."""
    changes: AppChanges = {}
    if user:
        credentials = resolve_user(root, user)
        changes |= {"uid": credentials.uid, "gid": credentials.gid, "groups": list(credentials.groups)}
        env = {"HOME": credentials.home, **env}
    if env:
        changes["env"] = env
    if workdir:
        if not workdir.startswith("/"):
            raise SpecError(f"enter -w {workdir}: give an absolute path in the container")
        changes["workdir"] = workdir
    return changes
