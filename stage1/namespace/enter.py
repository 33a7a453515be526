"""`sdrun enter` for a namespace pod: join the container's namespaces, confine as the app is, exec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import EXIT_RUNTIME_ERROR, describe
from sdrun.linux import syscalls as sc
from stage1.namespace.container import plan_file
from stage1.namespace.launch import confine_and_exec, exit_status, read_plan
from stage1.process import changed_app, set_resource_limits

if TYPE_CHECKING:
    from sdrun.pod import Pod
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
    """`POD_DIR LEADER CHANGES ARGV...`: enter() in the sealed interpreter that Namespace.enter
    execs; CHANGES is the JSON of the AppChanges (null for none)."""
    import json

    from sdrun.pod import load_pod

    pod_dir, leader, changes, *argv = args
    try:
        enter(load_pod(Path(pod_dir)), int(leader), argv, json.loads(changes))
    except BaseException as error:  # noqa: BLE001 - as manage's enter child: one line, exit 125
        os.write(2, f"sdrun: {describe(error)}\n".encode())
        os._exit(EXIT_RUNTIME_ERROR)


def enter(pod: Pod, leader: int, argv: list[str], changes: AppChanges | None = None) -> NoReturn:
    # The app as stage0 resolved it, user and groups included: never the container's /etc/passwd of
    # now, which the app may have rewritten (an app user that named itself uid 0 would enter as root).
    plan = read_plan(str(plan_file(pod)))
    seccomp_program = Path(plan["seccomp"]).read_bytes() if plan["seccomp"] else None
    app = changed_app(plan["app"], changes)  # enter -u, -e, -w
    set_resource_limits(app)  # before a user namespace takes the right to raise them
    join_namespaces(leader)
    child = os.fork()
    if child == 0:
        # Visible to the app from here (its PID namespace) with host privileges, host fds (the bus)
        # and the host's interpreter as /proc/PID/exe: not dumpable, so that the app can open none
        # of them through /proc until the exec, which makes the command dumpable again.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        confine_and_exec(app, plan["capabilities"], seccomp_program, argv)
    _, status = os.waitpid(child, 0)
    os._exit(exit_status(status))


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
