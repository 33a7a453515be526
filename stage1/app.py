"""The app as a stage1 runs it: spec values resolved against the rootfs, and the final exec."""

from __future__ import annotations

import os
import select
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sdrun.errors import SpecError
from sdrun.linux import syscalls
from sdrun.linux.rootfs import Credentials, find_executable, is_directory_in_root, resolve_user
from sdrun.spec import DEFAULT_PATH, AppSpec


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
    if not is_directory_in_root(rootfs, workdir):
        raise SpecError(f"working directory '{workdir}' does not exist in the container")
    return ResolvedApp(executable, argv, env, workdir, credentials)


class SystemdNotifier:
    """sd_notify(3) without libsystemd. Connects at once, so that it still reaches
    $NOTIFY_SOCKET after a chroot or pivot_root has hidden the socket's path."""

    def __init__(self) -> None:
        self._connection: socket.socket | None = None
        address = os.environ.pop("NOTIFY_SOCKET", None)
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]  # an abstract socket
            self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._connection.connect(address)

    def notify(self, message: str) -> None:
        if self._connection is not None:
            self._connection.send(message.encode())

    def barrier(self, timeout: float = 5.0) -> None:
        """Wait until systemd has processed every message sent so far (sd_notify_barrier(3)):
        it closes the pipe end passed with BARRIER=1 once it got that far."""
        if self._connection is None:
            return
        read_end, write_end = os.pipe()
        try:
            self._connection.sendmsg(
                [b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, write_end.to_bytes(4, sys.byteorder))]
            )
            os.close(write_end)
            write_end = -1
            select.select([read_end], [], [], timeout)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)


def systemd_handover() -> dict[str, str]:
    """What systemd gave the unit that is meant for the app: socket-activated fds (they stay
    open across our forks and the exec; LISTEN_PID names the app, which checks it against its
    own getpid()) and, when a stage1 set it for an app that reports its own readiness, NOTIFY_SOCKET."""
    handover = {key: os.environ[key] for key in ("LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET") if key in os.environ}
    if "LISTEN_FDS" in handover:
        handover["LISTEN_PID"] = str(os.getpid())
    return handover


def exec_app(
    app: ResolvedApp, argv: tuple[str, ...] | None = None, before_exec: Callable[[], None] | None = None
) -> NoReturn:
    """Become the app: drop to its credentials, enter its workdir, exec. Called after chroot/pivot_root.
    before_exec runs as the app's user right before the exec (a stage1 loads its seccomp filter there)."""
    credentials = app.credentials
    syscalls.setgroups(list(credentials.groups))
    os.setresgid(credentials.gid, credentials.gid, credentials.gid)
    os.setresuid(credentials.uid, credentials.uid, credentials.uid)
    os.chdir(app.workdir)
    if before_exec is not None:
        before_exec()
    command = argv or app.argv
    executable = app.executable if argv is None else command[0]
    env = app.env | systemd_handover()
    try:
        if "/" in executable:
            os.execve(executable, command, env)
        os.execvpe(executable, command, env)
    except OSError as error:
        os.write(2, f"sdrun: cannot execute '{command[0]}': {error.strerror}\n".encode())
        os._exit(127 if error.errno == 2 else 126)
