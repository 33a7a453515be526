"""The app as a stage1 runs it: spec values resolved against the rootfs, and the final exec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sdrun.errors import SpecError
from sdrun.linux.rootfs import Credentials, find_executable, is_directory_in_root, resolve_user
from sdrun.spec import DEFAULT_PATH, AppSpec, Volume
from stage1.process import Identity, exec_as


@dataclass(frozen=True)
class ResolvedApp:
    executable: str  # absolute path inside the rootfs
    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    credentials: Credentials


def resolve_app(rootfs: Path, app: AppSpec, default_argv: tuple[str, ...] = ()) -> ResolvedApp:
    argv = app.argv or default_argv
    if not argv:
        raise SpecError("no command given", hint="add one after '--', e.g. sdrun run --rootfs DIR -- /bin/sh")
    credentials = resolve_user(rootfs, app.user)
    env = {"HOME": credentials.home} | app.env
    executable = find_executable(rootfs, argv[0], env.get("PATH", DEFAULT_PATH))
    workdir = app.workdir or "/"
    if not is_directory_in_root(*_where_to_look(rootfs, app.volumes, workdir)):
        raise SpecError(f"working directory '{workdir}' does not exist in the container")
    return ResolvedApp(executable, argv, env, workdir, credentials)


def _where_to_look(rootfs: Path, volumes: tuple[Volume, ...], path: str) -> tuple[Path, str]:
    """The tree and the path in it that `path` will be in the container: the deepest volume
    whose target holds it (a stage1 may mount volumes after resolving the app), else the rootfs."""
    holders = [volume for volume in volumes if path == volume.target or path.startswith(volume.target + "/")]
    if not holders:
        return rootfs, path
    volume = max(holders, key=lambda item: len(item.target))
    return Path(volume.source), "/" + path.removeprefix(volume.target).lstrip("/")


def exec_app(
    app: ResolvedApp, argv: tuple[str, ...] | None = None, before_exec: Callable[[], None] | None = None
) -> NoReturn:
    """Become the app: drop to its credentials, enter its workdir, exec. Called after chroot/pivot_root.
    before_exec runs as the app's user right before the exec (a stage1 loads its seccomp filter there)."""
    credentials = app.credentials
    command = argv or app.argv
    executable = app.executable if argv is None else command[0]
    identity = Identity(credentials.uid, credentials.gid, credentials.groups)
    exec_as(identity, app.workdir, executable, command, app.env, before_exec)
