"""Carrying out the container plan inside the unit, leaving no stage1 process behind.

stage0 wrote the plan (stage1/namespace.plan, see ContainerPlan.entry_plan):
the app already resolved, every mount as data, capabilities as a mask, the
seccomp filter compiled. This module only carries it out, and imports nothing
it does not need (no dataclasses, no pathlib, no typing): every millisecond
here delays every container start.

Three processes, each with one job, and only the last one stays:

  entry (the unit's first main process)
    - unshares a private mount namespace and mounts the pod's rootfs there
      (an overlay over --rootfs DIR, idmapped under --private-users, or over
      the image's layer trees);
    - writes the uid/gid maps of the user namespace, if any;
    - tells systemd MAINPID=<container init> READY=1 and waits until systemd
      has read it (BARRIER=1), lets the container go, and exits.
  intermediate
    - joins the pod's named network namespace if one was made for it,
      creates the user namespace (it must be single-threaded: hence a fork),
      then unshares mount, UTS, IPC, cgroup, network and PID namespaces (and
      brings up loopback in a network namespace of its own) and forks,
      because a new PID namespace only takes the children; exits.
  container init (PID 1 of the new PID namespace)
    - writes the --sysctl settings (those of a joined network namespace
      are the intermediate's, before the user namespace, with the host's
      privileges), mounts /proc, /sys, /dev, volumes... into the rootfs, sets the hostname,
      pivot_root()s, waits for the entry's go, then drops
      capabilities, sets no_new_privs, loads seccomp and execs the app.

So systemd's MainPID is the app (or tini), and the unit's exit status is its.
"""

from __future__ import annotations

import _socket
import fcntl
import os
import struct

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe, error_line
from sdrun.linux import caps
from sdrun.linux import syscalls as sc
from sdrun.linux.mounts import BindMount, MountOperation, execute_plan
from stage1 import entry_pod_dir, fail, read_plan
from stage1.process import SystemdNotifier, exec_planned, set_resource_limits

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from stage1 import EntryPlan
    from stage1.process import AppPlan

    class Plan(EntryPlan):
        """stage1/namespace.plan: what ContainerPlan.entry_plan makes of the container, as plain values."""

        directory: str  # the pod's stage1 directory: every relative path below is relative to it
        root: str
        lowers: list[tuple[str, str]]  # (directory, where)
        volumes: list[tuple[str, str, bool]]  # (source, where, idmapped)
        overlay: str
        hostname: str
        mounts: list[tuple[object, ...]]  # MountOperation.to_plan()
        lockdown: list[tuple[object, ...]]
        capabilities: int  # a mask (sdrun.linux.caps)
        seccomp: str | None  # the compiled filter's path; None: unconfined
        userns: tuple[int, int] | None  # (base, size)
        host_network: bool
        netns: str
        init: bool
        notify: bool
        payload_cgroup: bool
        sysctl: list[tuple[str, str]]
        join: list[tuple[str, int]]  # (namespace file, CLONE_NEW*): a pod's IPC and UTS, for one of its apps
        terminal: bool  # `run -t`: the app's terminal, whose master goes out on stdin
        app: AppPlan

    import signal as _signal  # typeshed has no stubs for _signal: the same functions and constants
else:
    import _signal

PLAN_FILE = "namespace.plan"  # in the pod's stage1 directory; marshal, as the fly stage1's
NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP | sc.CLONE_NEWPID
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
TIOCSPTLCK, TIOCGPTPEER, TIOCSCTTY = 0x40045431, 0x5441, 0x540E  # termios's, without its import
# _signal and _socket: the C modules that signal and socket wrap, whose imports (enum, selectors)
# would cost every container start ~3 ms; the entry needs neither's enums.
FORWARDED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)
INIT_PATH = "/dev/init"  # where the container sees tini: under /dev, out of the image's way
CONTAINER_NOTIFY_SOCKET = "/run/host/notify"  # where systemd-nspawn puts it too


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


def main(argv: list[str]) -> NoReturn:
    """`python -m stage1.namespace run --interface=N POD_DIR`: the unit's entry."""
    pod_dir = entry_pod_dir(argv)
    try:
        launch(read_plan(os.path.join(pod_dir, "stage1", PLAN_FILE)), supervise=False)
    except (SdrunError, OSError) as error:
        fail(describe(error))
    except (ValueError, TypeError, KeyError) as error:
        fail(f"{PLAN_FILE} of {pod_dir} is damaged: {error}")


def supervise(args: list[str]) -> NoReturn:
    """`sdrun run --scope`'s child, from the sealed interpreter (stage1.sealed): PLAN_FILE. It stays as
    the container's parent, and exits with its status."""
    try:
        launch(read_plan(args[0]), supervise=True)
    except BaseException as error:  # noqa: BLE001 - as run's scope child was: one line, exit 125
        os.write(2, error_line(describe(error)).encode())
        os._exit(EXIT_RUNTIME_ERROR)


def launch(plan: Plan, *, supervise: bool) -> NoReturn:
    """supervise: stay as the container's parent and exit with its status (--scope, where no systemd waits)."""
    notify_socket = os.environ.get("NOTIFY_SOCKET", "")  # the notifier takes it out of our environment
    notifier = SystemdNotifier()  # connect before we leave the host's namespaces
    if plan["notify"] and notify_socket.startswith("/"):  # the app says READY=1 itself, from inside
        plan["mounts"].append(BindMount(notify_socket, CONTAINER_NOTIFY_SOCKET).to_plan())
        plan["app"]["env"]["NOTIFY_SOCKET"] = CONTAINER_NOTIFY_SOCKET
    else:
        plan["notify"] = False
    seccomp_program = None
    if plan["seccomp"] is not None:
        with open(plan["seccomp"], "rb") as stream:
            seccomp_program = stream.read()
    os.chdir(plan["directory"])  # the plan's relative paths are relative to it; the container init inherits it
    if plan["payload_cgroup"]:  # before the fork: the container's cgroup namespace is rooted where we are
        from sdrun.linux.cgroups import enter_payload_cgroups

        enter_payload_cgroups()
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # nothing we mount propagates to the host
    if supervise:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # the container init is re-parented to us
    to_intermediate, from_intermediate, ready, start = Channel(), Channel(), Channel(), Channel()
    intermediate = os.fork()
    if intermediate == 0:
        channels = (to_intermediate.reader(), from_intermediate.writer(), ready.writer(), start.reader())
        _guard(lambda: _intermediate(plan, seccomp_program, *channels))
    to_intermediate.writer(), from_intermediate.reader(), ready.reader(), start.writer()
    userns_fd = None
    if plan["userns"] is not None:
        from_intermediate.receive("creating the user namespace")
        userns_fd = _map_user_namespace(intermediate, plan["userns"])
    _mount_rootfs(plan, userns_fd)
    to_intermediate.send(b"go")
    init_pid = int(from_intermediate.receive("starting the container init"))
    _, status = os.waitpid(intermediate, 0)
    if status != 0:
        raise SdrunError("container setup failed")
    ready.receive("the container was ready")
    notifier.notify(f"MAINPID={init_pid}" if plan["notify"] else f"MAINPID={init_pid}\nREADY=1")
    notifier.barrier()  # systemd knows the init as MainPID before we may exit
    start.send(b"go")
    if not supervise:
        os._exit(0)
    wait_forwarding_signals(init_pid)


def _guard(step: Callable[[], object]) -> NoReturn:
    """Run a forked child's step; report its failure on stderr (the journal) and exit 125."""
    try:
        step()
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave, never return
        os.write(2, error_line(describe(error), program="sdrun stage1").encode())
    os._exit(EXIT_RUNTIME_ERROR)


def _map_user_namespace(pid: int, userns: tuple[int, int]) -> int:
    base, count = userns
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as stream:
            stream.write(f"0 {base} {count}\n")
    return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def _attach_tree(source: str, target: str, userns_fd: int | None, *, recursive: bool = False) -> None:
    """Bind source at target, through the user namespace's id map if given (an idmapped mount);
    recursive: with the mounts under source too (a volume's, as a bind mount takes them)."""
    if os.path.isdir(source):
        _make_directory(target)
    else:  # a file bound on its own: its mount point is a file
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    tree = sc.open_tree(source, sc.OPEN_TREE_CLONE | (sc.AT_RECURSIVE if recursive else 0))
    try:
        if userns_fd is not None:
            sc.idmap_mount(tree, userns_fd, recursive=recursive)
        sc.move_mount(tree, target)
    finally:
        os.close(tree)


def _make_directory(path: str) -> None:
    try:  # noqa: SIM105 - contextlib.suppress: an import every container start would pay
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass


def _mount_rootfs(plan: Plan, userns_fd: int | None) -> None:
    """The pod's root at plan["root"], in the entry's private mount namespace: an overlay with the
    pod's own upper layer over the --rootfs directory or the image's layer trees, each bound
    (idmapped in a user namespace) where the overlay's options name it."""
    for source, where in plan["lowers"]:
        _attach_tree(source, where, userns_fd)
    for source, where, idmapped in plan["volumes"]:  # under --private-users only: see container.volume_mounts
        try:
            _attach_tree(source, where, userns_fd if idmapped else None, recursive=True)
        except OSError as error:
            if not idmapped:
                raise
            hint = "its file system (or one mounted below it) may not support idmapped mounts: drop idmap, or use U"
            raise SdrunError(f"volume {source}: {error.strerror}; {hint}") from None
    _make_directory(plan["root"])
    sc.mount("overlay", plan["root"], "overlay", 0, plan["overlay"])


def _intermediate(
    plan: Plan, seccomp_program: bytes | None, to_intermediate: Channel, from_intermediate: Channel, *rest: Channel
) -> None:
    joined = _join_network_namespace(plan)
    unshared = NAMESPACES
    for path, kind in plan.get("join", ()):  # a pod's, held by files (sdrun.pods): before the user namespace
        sc.setns_path(path, kind)
        unshared &= ~kind
    if joined and plan.get("sysctl"):
        # Its net.* now, with the host's privileges: a user namespace of ours will not own it.
        _set_sysctls([sysctl for sysctl in plan["sysctl"] if sysctl[0].startswith("net.")])
        plan["sysctl"] = [sysctl for sysctl in plan["sysctl"] if not sysctl[0].startswith("net.")]
    if plan["userns"] is not None:
        set_resource_limits(plan["app"])  # while we may raise them; the app's exec sets the same again
        sc.unshare(sc.CLONE_NEWUSER)
        from_intermediate.send(b"u")
    to_intermediate.receive("mounting the rootfs")
    private_network = not plan["host_network"] and not joined
    sc.unshare(unshared | (sc.CLONE_NEWNET if private_network else 0))
    if private_network:
        # Only in a namespace of our own: a joined one's loopback is up already, and in a user
        # namespace that does not own it the ioctl would be refused.
        _bring_up_loopback()
        # As in a network namespace sdrun.net makes (link.py), but in this user namespace's gids.
        _allow_icmp_sockets(caps.ICMP_SOCKET_GROUPS if plan["userns"] is None else f"0 {plan['userns'][1] - 1}")
    init_pid = os.fork()
    if init_pid == 0:
        ready, start = rest
        _guard(lambda: _container_init(plan, seccomp_program, ready, start))
    from_intermediate.send(str(init_pid).encode())
    os._exit(0)


def _join_network_namespace(plan: Plan) -> bool:
    """Join the named network namespace the networking set-up made for the pod, if any (before the
    user namespace: joining needs the host's privileges); otherwise a private one, or the host's."""
    if plan["host_network"]:
        return False
    try:
        sc.setns_path(plan["netns"], sc.CLONE_NEWNET)
    except FileNotFoundError:
        return False
    return True


def _container_init(plan: Plan, seccomp_program: bytes | None, ready: Channel, start: Channel) -> NoReturn:
    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # until the exec, /proc/1/exe is the host's interpreter: keep it out of reach
    if plan["userns"] is not None:
        os.setresgid(0, 0, 0)  # root of the new namespace: setup may then create files as root
        os.setresuid(0, 0, 0)
    if plan.get("sysctl"):  # as the root of the pod's namespaces: the IPC namespace's take no capability
        _set_sysctls(plan["sysctl"])
    root = plan["root"]
    # A mount made by the entry is locked in a user namespace's copy, and pivot_root refuses a
    # locked root: bind the root onto itself for a mount of our own (as runc does).
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    execute_plan([MountOperation.from_plan(entry) for entry in plan["mounts"] + plan["lockdown"]], root)
    if not any(kind == sc.CLONE_NEWUTS for _, kind in plan.get("join", ())):  # a pod's has its own already
        sc.sethostname(plan["hostname"])
    _pivot_root(root)
    ready.send(b"ready")
    start.receive("systemd accepted the container init")  # now MAINPID is ours: the app may run and exit
    app = plan["app"]
    if plan.get("terminal"):
        _take_terminal(app)
    argv = [INIT_PATH, "--", *app["argv"]] if plan["init"] else None
    confine_and_exec(app, plan["capabilities"], seccomp_program, argv)


def _take_terminal(app: AppPlan) -> None:
    """`run -t`: a pseudo-terminal of the container's own devpts (so `tty` names /dev/pts/N inside)
    becomes the app's controlling terminal and stdin, stdout and stderr; its master goes to
    `sdrun run`, which relays it, over the socket that is the unit's stdin (as runc's console socket)."""
    master, slave = open_pod_terminal(app["uid"])
    send_terminal(0, master)  # fd 0 is about to be the terminal
    os.setsid()  # the session the terminal is controlling for: ^C and job control reach the app
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def open_pod_terminal(uid: int) -> tuple[int, int]:
    """A new pseudo-terminal of the devpts at /dev/pts: the container's, in its mount namespace
    (`run -t`'s container init, `enter -t`). Its master and slave, both close-on-exec; the slave
    is uid's, as a login's terminal is its user's."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    os.fchown(slave, uid, -1)
    return master, slave


def send_terminal(channel_fd: int, master: int) -> None:
    """Send master over the socket channel_fd to the sdrun command that relays it (SCM_RIGHTS, as
    runc's console socket), and close our copy: no process of the pod's ever holds it."""
    channel = _socket.socket(fileno=channel_fd)
    try:
        channel.sendmsg([b"t"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", master))])
    finally:
        channel.detach()  # the caller closes or reuses channel_fd: the object must not close it
        os.close(master)


def _pivot_root(root: str) -> None:
    """Make root the process's `/` and detach the host's root from this mount namespace."""
    os.chdir(root)
    sc.pivot_root(".", ".")  # the old root is now stacked under the new one, at "."
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _allow_icmp_sockets(groups: str) -> None:
    """Let the pod's groups open ICMP echo sockets in its network namespace (as Docker and podman
    do): ping without NET_RAW, which the default capabilities leave out. The kernel, not the
    app, writes those packets' headers. Group ids are the writer's user namespace's."""
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as stream:  # the opener's network namespace
        stream.write(groups)


def _set_sysctls(sysctls: list[tuple[str, str]]) -> None:
    """--sysctl: write them in the namespaces of this process (through the host's /proc, before the
    container's read-only /proc/sys exists). The kernel lets a network namespace's sysctls (net.*) be
    written with NET_ADMIN over it, and an IPC namespace's only by the uid that is root of the user
    namespace owning it."""
    for key, value in sysctls:
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as stream:
                stream.write(value)
        except OSError as error:
            raise SdrunError(f"--sysctl {key}={value}: {error.strerror}") from None


def _bring_up_loopback() -> None:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request + bytes(22))[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP) + bytes(22))
    finally:
        sock.close()


def confine_and_exec(
    app: AppPlan,
    capabilities: int,
    seccomp_program: bytes | None,
    argv: list[str] | None,
    inheritable: int | None = None,
) -> NoReturn:
    """Drop to the container's capabilities (a mask), set no_new_privs, load seccomp, and exec as
    the app's user: the planned app, or argv instead of its command. inheritable: that set's own
    mask (sdrun-oci's), else the same as the others."""
    caps.limit_bounding_set(capabilities)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)

    def as_app_user() -> None:
        # setresuid() to a non-root user has already emptied the permitted set; root keeps the container's set.
        caps.set_capabilities(capabilities if os.geteuid() == 0 else 0, inheritable)
        if seccomp_program is not None:
            sc.load_seccomp_filter(seccomp_program)  # last: the filter then governs only the app

    exec_planned(app, argv, before_exec=as_app_user)


def wait_forwarding_signals(child: int) -> NoReturn:
    """Pass the signals a supervisor sends on to child (--scope's container init, an entered
    command), and exit with its status."""
    for number in FORWARDED_SIGNALS:
        _signal.signal(number, lambda received, _frame: os.kill(child, received))
    _, status = os.waitpid(child, 0)
    os._exit(exit_status(status))


def exit_status(wait_status: int) -> int:
    """A shell-style exit status from a waitpid() status: the child's own, or 128+N after signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code
