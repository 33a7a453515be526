"""`sdrun enter` for a namespace pod: join the container's namespaces, confine as the app is, exec."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import EXIT_RUNTIME_ERROR, describe, error_line
from sdrun.linux import syscalls as sc
from stage1 import read_plan
from stage1.namespace.container import plan_file
from stage1.namespace.entry import (
    TIOCSCTTY,
    confine_and_exec,
    open_pod_terminal,
    send_terminal,
    wait_forwarding_signals,
)
from stage1.process import changed_app, set_resource_limits

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from stage1.interface import EnterTerminal
    from stage1.namespace.entry import Plan
    from stage1.process import AppChanges

# The user namespace comes last, as nsenter does for a privileged caller: joining it takes our
# capabilities over every namespace it does not own, and the network namespace sdrun.net made for
# a pod is the host's (the pod's own, as the others, we may join as host root just as well). The
# PID namespace only applies to children, so we fork once all are joined.
NAMESPACES = (
    ("cgroup", sc.CLONE_NEWCGROUP),
    ("ipc", sc.CLONE_NEWIPC),
    ("uts", sc.CLONE_NEWUTS),
    ("net", sc.CLONE_NEWNET),
    ("pid", sc.CLONE_NEWPID),
    ("mnt", sc.CLONE_NEWNS),
    ("user", sc.CLONE_NEWUSER),
)


def main(args: list[str]) -> NoReturn:
    """`POD_DIR LEADER CHANGES TERMINAL ARGV...`: enter() in the sealed interpreter that
    Namespace.enter execs; CHANGES is the JSON of the AppChanges, TERMINAL of the EnterTerminal's
    fields (null for none of either)."""
    import json

    from sdrun.pod import load_pod

    pod_dir, leader, changes, terminal, *argv = args
    try:
        asked = json.loads(terminal)
        requested: EnterTerminal | None = None
        if asked is not None:  # stage1.interface: not on a health check's path
            from stage1.interface import EnterTerminal

            requested = EnterTerminal(asked["channel"], tuple(asked["stdio"]))
        enter(load_pod(Path(pod_dir)), int(leader), argv, json.loads(changes), requested)
    except BaseException as error:  # noqa: BLE001 - as manage's enter child: one line, exit 125
        os.write(2, error_line(describe(error)).encode())
        os._exit(EXIT_RUNTIME_ERROR)


def enter(
    pod: Pod, leader: int, argv: list[str], changes: AppChanges | None = None, terminal: EnterTerminal | None = None
) -> NoReturn:
    """terminal (`enter -t`, the default on a terminal): the command's controlling terminal is a
    new one of the pod's devpts, on terminal.stdio, whose master goes to `sdrun enter` on
    terminal.channel."""
    # The app as stage0 resolved it, user and groups included: never the container's /etc/passwd of
    # now, which the app may have rewritten (an app user that named itself uid 0 would enter as root).
    plan: Plan = read_plan(str(plan_file(pod)))
    seccomp_program = Path(plan["seccomp"]).read_bytes() if plan["seccomp"] else None
    app = changed_app(plan["app"], changes)  # enter -u, -e, -w
    set_resource_limits(app)  # before a user namespace takes the right to raise them
    join_namespaces(leader)
    if terminal is not None:
        take_pod_terminal(terminal, app["uid"])
    child = os.fork()
    if child == 0:
        # Visible to the app from here (its PID namespace) with host privileges, host fds (the bus)
        # and the host's interpreter as /proc/PID/exe: not dumpable, so that the app can open none
        # of them through /proc until the exec, which makes the command dumpable again.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        # A session of its own: in ours, the caller's terminal would be the command's controlling
        # one even with no terminal on its stdio, which it could open as /dev/tty (DevicePolicy
        # allows it) and read. With a terminal, the pod's is (^C, job control).
        os.setsid()
        if terminal is not None:
            fcntl.ioctl(terminal.stdio[0], TIOCSCTTY, 0)
        confine_and_exec(app, plan["capabilities"], seccomp_program, argv)
    # Out of our session, the command no longer gets the signals the caller's terminal sends ours
    # (^C without a terminal of the pod's): we pass them on.
    wait_forwarding_signals(child)


def take_pod_terminal(terminal: EnterTerminal, uid: int) -> None:
    """Once in the pod's mount namespace (its /dev/pts), and its user namespace (so that the
    terminal is the pod's root's, then uid's): a new pseudo-terminal, whose master goes to
    `sdrun enter` and leaves this process before the fork, and whose slave replaces the caller's
    terminals on terminal.stdio. So the command, and the pod, never get hold of either of those:
    only this process, which stays in the host's PID namespace, held them."""
    # Root of the pod's user namespace, if we joined one, as its container init is: setns() left us
    # host root, a uid the namespace does not map, whose terminal would be nobody's, past a chown.
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    master, slave = open_pod_terminal(uid)
    send_terminal(terminal.channel, master)
    os.close(terminal.channel)
    for fd in terminal.stdio:
        os.dup2(slave, fd)
    os.close(slave)


def join_namespaces(leader: int) -> None:
    """setns() into each namespace of leader that differs from ours (--net=host shares the host's, say)."""
    joins = []
    for name, kind in NAMESPACES:
        theirs = os.stat(f"/proc/{leader}/ns/{name}")
        ours = os.stat(f"/proc/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            joins.append((os.open(f"/proc/{leader}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), kind))
    for fd, kind in joins:
        sc.setns(fd, kind)
        os.close(fd)
