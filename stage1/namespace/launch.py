"""Carrying out a ContainerPlan inside the unit, leaving no stage1 process behind.

Three processes, each with one job, and only the last one stays:

  entry (the unit's first main process)
    - unshares a private mount namespace and mounts the pod's rootfs there
      (an overlay over --rootfs DIR, idmapped under --private-users);
    - writes the uid/gid maps of the user namespace, if any;
    - tells systemd MAINPID=<container init> READY=1 and waits until systemd
      has read it (BARRIER=1), lets the container go, and exits.
  intermediate
    - joins the pod's named network namespace if one was made for it,
      creates the user namespace (it must be single-threaded: hence a fork),
      then unshares mount, UTS, IPC, cgroup, network and PID namespaces and
      forks, because a new PID namespace only takes the children; exits.
  container init (PID 1 of the new PID namespace)
    - mounts /proc, /sys, /dev, volumes... into the rootfs, sets the hostname,
      brings up loopback, pivot_root()s, waits for the entry's go, then drops
      capabilities, sets no_new_privs, loads seccomp and execs the app.

So systemd's MainPID is the app (or tini), and the unit's exit status is its.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe
from sdrun.linux import caps
from sdrun.linux import syscalls as sc
from sdrun.linux.mounts import execute_plan
from stage1.app import ResolvedApp, exec_app, resolve_app
from stage1.namespace.container import INIT_PATH, ContainerPlan, container_plan, network_namespace, stage1_dir
from stage1.process import SystemdNotifier

if TYPE_CHECKING:
    from sdrun.pod import Pod

NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP | sc.CLONE_NEWPID
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Channel:
    """A one-way pipe between two of our processes. Each side closes the end it does not
    use right after the fork, so that EOF tells a reader its writer has died."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()  # close-on-exec: the app never sees them

    def writer(self) -> Channel:
        os.close(self.read_end)
        return self

    def reader(self) -> Channel:
        os.close(self.write_end)
        return self

    def send(self, message: bytes) -> None:
        os.write(self.write_end, message)

    def receive(self, what: str) -> bytes:
        message = os.read(self.read_end, 64)
        if not message:
            raise SdrunError(f"container setup failed before {what}")
        return message


def become_container(pod: Pod) -> NoReturn:
    """The unit's entry: set the container up and hand systemd its init."""
    launch(pod, supervise=False)


def launch(pod: Pod, *, supervise: bool) -> NoReturn:
    """supervise: stay as the container's parent and exit with its status (--scope, where no systemd waits)."""
    plan = container_plan(pod)
    notifier = SystemdNotifier()  # connect before we leave the host's namespaces
    seccomp_program = plan.seccomp_filter.read_bytes() if plan.seccomp_filter else None
    os.chdir(stage1_dir(pod))  # plan paths are relative to it; the container init inherits it
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # nothing we mount propagates to the host
    if supervise:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # the container init is re-parented to us
    to_intermediate, from_intermediate, ready, start = Channel(), Channel(), Channel(), Channel()
    intermediate = os.fork()
    if intermediate == 0:
        channels = (to_intermediate.reader(), from_intermediate.writer(), ready.writer(), start.reader())
        _guard(lambda: _intermediate(pod, plan, seccomp_program, *channels))
    to_intermediate.writer(), from_intermediate.reader(), ready.reader(), start.writer()
    userns_fd = None
    if plan.user_namespace is not None:
        from_intermediate.receive("creating the user namespace")
        userns_fd = _map_user_namespace(intermediate, plan)
    _mount_rootfs(pod, plan, userns_fd)
    to_intermediate.send(b"go")
    init_pid = int(from_intermediate.receive("starting the container init"))
    _, status = os.waitpid(intermediate, 0)
    if status != 0:
        raise SdrunError("container setup failed")
    ready.receive("the container was ready")
    # An app that reports its own readiness (spec notify) says READY=1 itself, from inside.
    notifier.notify(f"MAINPID={init_pid}" if plan.notify_socket else f"MAINPID={init_pid}\nREADY=1")
    notifier.barrier()  # systemd knows the init as MainPID before we may exit
    start.send(b"go")
    if not supervise:
        os._exit(0)
    _supervise(init_pid)


def _guard(step: Callable[[], object]) -> NoReturn:
    """Run a forked child's step; report its failure on stderr (the journal) and exit 125."""
    try:
        step()
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave, never return
        os.write(2, f"sdrun stage1: {describe(error)}\n".encode())
    os._exit(EXIT_RUNTIME_ERROR)


def _map_user_namespace(pid: int, plan: ContainerPlan) -> int:
    assert plan.user_namespace is not None
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{name}").write_text(plan.user_namespace.map)
    return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def _attach_tree(source: Path, target: Path, userns_fd: int | None) -> None:
    """Bind source at target, through the user namespace's id map if given (an idmapped mount)."""
    target.mkdir(exist_ok=True)
    tree = sc.open_tree(source, sc.OPEN_TREE_CLONE)
    try:
        if userns_fd is not None:
            sc.idmap_mount(tree, userns_fd)
        sc.move_mount(tree, target)
    finally:
        os.close(tree)


def _mount_rootfs(pod: Pod, plan: ContainerPlan, userns_fd: int | None) -> None:
    """The pod's root at plan.root, in the entry's private mount namespace."""
    if plan.lower is None:
        if userns_fd is not None:
            raise SdrunError("--private-users needs a --rootfs pod for now")
        from stage1.rootfs import mount_pod_rootfs  # type: ignore[import-not-found,import-untyped,unused-ignore]

        _attach_tree(Path(mount_pod_rootfs(pod)), plan.root, None)
        return
    if plan.read_only:
        _attach_tree(plan.lower, plan.root, userns_fd)
        return
    # The directory is shared by every pod that runs it: the pod writes to its own upper layer.
    lower = Path("lower")
    _attach_tree(plan.lower, lower, userns_fd)
    plan.root.mkdir(exist_ok=True)
    options = f"lowerdir={lower},upperdir={plan.upper},workdir={plan.work}"
    sc.mount("overlay", plan.root, "overlay", 0, options)


def _intermediate(
    pod: Pod,
    plan: ContainerPlan,
    seccomp_program: bytes | None,
    to_intermediate: Channel,
    from_intermediate: Channel,
    ready: Channel,
    start: Channel,
) -> None:
    netns = network_namespace(pod)
    if netns is not None:  # before the user namespace: joining needs the host's privileges
        with open(netns) as stream:
            sc.setns(stream.fileno(), sc.CLONE_NEWNET)
    if plan.user_namespace is not None:
        sc.unshare(sc.CLONE_NEWUSER)
        from_intermediate.send(b"u")
    to_intermediate.receive("mounting the rootfs")
    private_network = not plan.host_network and netns is None
    sc.unshare(NAMESPACES | (sc.CLONE_NEWNET if private_network else 0))
    init_pid = os.fork()
    if init_pid == 0:
        _guard(lambda: _container_init(pod, plan, seccomp_program, ready, start))
    from_intermediate.send(str(init_pid).encode())
    os._exit(0)


def _container_init(
    pod: Pod, plan: ContainerPlan, seccomp_program: bytes | None, ready: Channel, start: Channel
) -> NoReturn:
    if plan.user_namespace is not None:
        os.setresgid(0, 0, 0)  # root of the new namespace: setup may then create files as root
        os.setresuid(0, 0, 0)
    # A mount made by the entry is locked in a user namespace's copy, and pivot_root refuses a
    # locked root: bind the root onto itself for a mount of our own (as runc does).
    sc.mount(plan.root, plan.root, None, sc.MS_BIND | sc.MS_REC)
    app = resolve_app(plan.root, pod.spec.app)
    execute_plan(plan.mounts, plan.root)
    sc.sethostname(plan.hostname)
    if not plan.host_network:
        _bring_up_loopback()
    _pivot_root(plan.root)
    ready.send(b"ready")
    start.receive("systemd accepted the container init")  # now MAINPID is ours: the app may run and exit
    argv = (INIT_PATH, "--", *app.argv) if plan.init else None
    if plan.notify_socket:
        os.environ["NOTIFY_SOCKET"] = plan.notify_socket
    confine_and_exec(app, plan.capabilities, seccomp_program, argv)


def _pivot_root(root: Path) -> None:
    """Make root the process's `/` and detach the host's root from this mount namespace."""
    os.chdir(root)
    sc.pivot_root(".", ".")  # the old root is now stacked under the new one, at "."
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request + bytes(22))[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP) + bytes(22))


def confine_and_exec(
    app: ResolvedApp, capabilities: frozenset[str], seccomp_program: bytes | None, argv: tuple[str, ...] | None
) -> NoReturn:
    """Drop to the container's capabilities, set no_new_privs, load seccomp, and exec as the app's user."""
    caps.limit_bounding_set(capabilities)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)

    def as_app_user() -> None:
        # setresuid() to a non-root user has already emptied the permitted set; root keeps the container's set.
        caps.set_capabilities(capabilities if os.geteuid() == 0 else ())
        if seccomp_program is not None:
            sc.load_seccomp_filter(seccomp_program)  # last: the filter then governs only the app

    exec_app(app, argv, before_exec=as_app_user)


def _supervise(init_pid: int) -> NoReturn:
    for number in FORWARDED_SIGNALS:
        signal.signal(number, lambda received, _frame: os.kill(init_pid, received))
    _, status = os.waitpid(init_pid, 0)
    os._exit(exit_status(status))


def exit_status(wait_status: int) -> int:
    """A shell-style exit status from a waitpid() status: the child's own, or 128+N after signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code
