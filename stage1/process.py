"""The last steps of every stage1 before the app runs: telling systemd, and the exec itself.

Light on purpose (no dataclasses, no pathlib, not even socket): the in-unit entries import it.
It talks to systemd through _socket, the C module socket wraps: socket itself imports enum and
selectors, ~3 ms of every container start for the one datagram socket here.
"""

from __future__ import annotations

import _socket
import os
import select
import sys

from sdrun.errors import error_line
from sdrun.linux import syscalls

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed has no stubs for _signal: the same functions and constants
    from collections.abc import Callable, Sequence
    from typing import NoReturn, TypedDict

    class AppPlan(TypedDict):
        """The app as a plan carries it (stage1.app.ResolvedApp.plan_fields), resolved by stage0."""

        executable: str
        argv: list[str]
        env: dict[str, str]
        workdir: str
        uid: int
        gid: int
        groups: list[int]
        rlimits: list[tuple[int, int, int]]  # (RLIMIT_*, soft, hard)

    class AppChanges(TypedDict, total=False):
        """`sdrun enter -u USER -e KEY=VALUE -w DIR` (stage1.app.enter_changes): uid, gid, groups
        and workdir replace the planned ones, env adds to its."""

        uid: int
        gid: int
        groups: list[int]
        workdir: str
        env: dict[str, str]
else:
    import _signal


class Identity:
    """Who the app runs as: numeric ids, already resolved against the container's /etc."""

    __slots__ = ("gid", "groups", "uid")

    def __init__(self, uid: int, gid: int, groups: Sequence[int] = ()) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups


class SystemdNotifier:
    """sd_notify(3) without libsystemd. Connects at once, so that it still reaches
    $NOTIFY_SOCKET after a chroot or pivot_root has hidden the socket's path."""

    def __init__(self) -> None:
        self._connection: _socket.socket | None = None
        address = os.environ.pop("NOTIFY_SOCKET", None)
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]  # an abstract socket
            self._connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
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
                [b"BARRIER=1"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, write_end.to_bytes(4, sys.byteorder))]
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


def exec_as(
    identity: Identity,
    workdir: str,
    executable: str,
    argv: Sequence[str],
    env: dict[str, str],
    before_exec: Callable[[], None] | None = None,
) -> NoReturn:
    """Become the app: drop to its identity, enter its workdir, exec. Called after chroot/pivot_root.
    before_exec runs as the app's user right before the exec (a stage1 loads its seccomp filter there)."""
    syscalls.setgroups(list(identity.groups))
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)
    os.chdir(workdir)
    if before_exec is not None:
        before_exec()
    env = env | systemd_handover()
    argv = list(argv)
    stop_ignoring_signals()
    try:
        if "/" in executable:
            os.execve(executable, argv, env)
        os.execvpe(executable, argv, env)
    except OSError as error:
        os.write(2, error_line(f"cannot execute '{argv[0]}': {error.strerror}").encode())
        os._exit(127 if error.errno == 2 else 126)


def close_all_but_stdio(keep: int | None = None) -> None:
    """Close every descriptor but 0, 1 and 2, and keep if given (os.closerange is one close_range(2)
    on Linux): for a process about to join a pod, which must take none of its caller's along."""
    if keep is None or keep < 3:
        os.closerange(3, 2**31 - 1)
        return
    os.closerange(3, keep)
    os.closerange(keep + 1, 2**31 - 1)


def stop_ignoring_signals() -> None:
    """Every signal back at its default action, as for a fresh container's init. An ignored signal
    stays ignored across execve() (a caught one does not): the interpreter ignores SIGPIPE and
    SIGXFSZ, systemd SIGPIPE, and whoever started sdrun may have ignored more (nohup SIGHUP, a
    shell's background job SIGINT), which a shell app could then not even trap."""
    for number in range(1, _signal.NSIG):
        if _signal.getsignal(number) == _signal.SIG_IGN:  # None for those the C library keeps
            _signal.signal(number, _signal.SIG_DFL)


def set_resource_limits(app: AppPlan) -> None:
    """setrlimit(2) for each of a planned app's limits. Raising a hard limit takes CAP_SYS_RESOURCE
    in the host's user namespace: a stage1 that enters a user namespace first sets them before."""
    for number, soft, hard in app.get("rlimits", ()):
        syscalls.setrlimit(number, soft, hard)


def exec_planned(
    app: AppPlan, argv: Sequence[str] | None = None, before_exec: Callable[[], None] | None = None
) -> NoReturn:
    """exec_as for an app a stage1 plan carries (stage1.app.ResolvedApp.plan_fields): the planned
    command, or argv (its first word an absolute path in the container) instead."""
    set_resource_limits(app)  # still privileged: a hard limit may go up as well as down
    identity = Identity(app["uid"], app["gid"], app["groups"])
    command = app["argv"] if argv is None else argv
    executable = app["executable"] if argv is None else command[0]
    exec_as(identity, app["workdir"], executable, command, app["env"], before_exec)


def changed_app(fields: AppPlan, changes: AppChanges | None) -> AppPlan:
    """The planned app with `sdrun enter`'s changes (AppChanges), as data."""
    if not changes:
        return fields
    return {**fields, **changes, "env": {**fields["env"], **changes.get("env", {})}}
