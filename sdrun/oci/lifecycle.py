"""create, start, kill and delete: the container as a descendant of the caller, in a systemd scope.

`create` forks a set-up child, which systemd moves into a transient scope (PIDs=, Delegate=yes)
before it does anything; it then joins and unshares the namespaces and forks the container init,
and exits, so that the init is re-parented to the caller (conmon and containerd's shim are
subreapers, and learn its exit status by waitpid()). The init mounts what config.json says with
the namespace stage1's mount operations, pivot_root()s, reports "ready" to `create`, and blocks
opening exec.fifo for writing until `start` opens it for reading; then it confines itself
(stage1.namespace.entry.confine_and_exec: bounding set, no_new_privs, seccomp, user) and execs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sdrun.errors import EXIT_RUNTIME_ERROR, NotFound, SdrunError, describe
from sdrun.oci import hooks as oci_hooks
from sdrun.oci import state
from sdrun.oci.config import ID_PATTERN, ContainerConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from sdrun.systemd.bus import Property, Systemd

DEFAULT_SLICE = "machine.slice"
# runc's defaults for a container's devices cgroup, which DevicePolicy=closed (null, zero, full,
# random, urandom) and these make: the terminal devices and the container's own ptys.
DEVICE_ALLOW = [["/dev/tty", "rwm"], ["/dev/ptmx", "rwm"], ["/dev/console", "rwm"], ["char-pts", "rwm"]]
KILL_WAIT_SECONDS = 10.0
CREATE_HOOKS = ("prestart", "createRuntime")  # run while the init waits, before its mounts
LATER_HOOKS = ("poststart", "poststop")  # kept in state.json for start and delete
SECCOMP_CACHE = ".seccomp"  # under --root: no container ID starts with a dot (ID_PATTERN)


class Options:
    """The global flags and create's flags, as the callers pass them."""

    def __init__(self, root: Path, *, systemd_cgroup: bool = False) -> None:
        self.root = root
        self.systemd_cgroup = systemd_cgroup


def check_id(container_id: str) -> None:
    if not ID_PATTERN.fullmatch(container_id):
        raise SdrunError(f"invalid container id '{container_id}'")


def scope_of(config: ContainerConfig, container_id: str, systemd_cgroup: bool) -> tuple[str, str]:
    """(the scope's name, its slice). With --systemd-cgroup, cgroupsPath "slice:prefix:name" names
    prefix-name.scope in slice, as runc and crun read it; otherwise sdrun-oci-ID.scope in machine.slice."""
    if systemd_cgroup and config.cgroups_path:
        parts = config.cgroups_path.split(":")
        if len(parts) != 3:
            raise SdrunError(f"cgroupsPath '{config.cgroups_path}': expected slice:prefix:name with --systemd-cgroup")
        slice_, prefix, name = parts
        return (f"{prefix}-{name}.scope" if prefix else f"{name}.scope"), slice_ or DEFAULT_SLICE
    return f"sdrun-oci-{container_id}.scope", DEFAULT_SLICE


def scope_properties(config: ContainerConfig, container_id: str, slice_: str, pid: int) -> list[Property]:
    from sdrun.systemd.propertytable import prop

    properties = [
        prop("Description", f"sdrun-oci container {container_id}"),
        prop("Slice", slice_),
        prop("PIDs", [pid]),
        prop("Delegate", True),
        prop("DevicePolicy", "closed"),
        prop("DeviceAllow", DEVICE_ALLOW),
    ]
    if config.pids_limit is not None and config.pids_limit > 0:
        properties.append(prop("TasksMax", config.pids_limit))
    if config.memory_limit is not None and config.memory_limit > 0:
        properties.append(prop("MemoryMax", config.memory_limit))
    return properties


# --- create ---


def create(
    options: Options,
    container_id: str,
    bundle: str,
    pid_file: str | None,
    console_socket: str | None,
    preserve_fds: int,
) -> None:
    from sdrun.oci import config as oci_config

    check_id(container_id)
    config = oci_config.load(bundle, str(options.root / SECCOMP_CACHE))
    unit, slice_ = scope_of(config, container_id, options.systemd_cgroup)
    console = _connect_console(console_socket) if config.terminal else None
    container = state.ContainerDir(options.root, container_id)
    container.claim()
    init_pid = 0
    try:
        os.mkfifo(container.fifo, 0o600)
        if config.seccomp is not None:  # for exec, which confines its process as the container's
            (container.path / state.SECCOMP).write_bytes(config.seccomp)
        init_pid = _start_container(config, container, os.path.abspath(bundle), unit, slice_, console, preserve_fds)
        record = state.Record(
            id=container_id,
            pid=init_pid,
            start_time=state.process_start_time(init_pid) or 0,
            bundle=os.path.abspath(bundle),
            unit=unit,
            annotations=config.annotations,
            created=datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            hooks=oci_hooks.to_json({point: config.hooks[point] for point in LATER_HOOKS if point in config.hooks}),
        )
        container.write(record)
        if pid_file:
            from sdrun.files import write_atomically

            write_atomically(pid_file, str(init_pid))
    except BaseException:
        if init_pid:  # it runs, held at the fifo: it must not outlive a create that failed
            _abandon(init_pid, unit)
        container.remove()
        raise
    finally:
        if console is not None:
            os.close(console)


def _abandon(init_pid: int, unit: str) -> None:
    from sdrun.systemd.bus import Systemd

    with contextlib.suppress(ProcessLookupError):
        os.kill(init_pid, signal.SIGKILL)
    systemd = Systemd.connect()
    try:
        _stop_scope(systemd, unit)
    finally:
        systemd.close()


def _connect_console(path: str | None) -> int:
    import socket

    if not path:
        raise SdrunError("process.terminal is set: --console-socket is required")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as error:
        sock.close()
        raise SdrunError(f"cannot connect to console socket {path}: {error.strerror}") from None
    return sock.detach()


def _start_container(
    config: ContainerConfig,
    container: state.ContainerDir,
    bundle: str,
    unit: str,
    slice_: str,
    console: int | None,
    preserve_fds: int,
) -> int:
    """Fork the set-up child, put it in the scope, let it go; the init's pid once it is ready."""
    from sdrun.systemd.bus import Systemd

    systemd = Systemd.connect()
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    with_hooks = any(point in config.hooks for point in CREATE_HOOKS)
    hooks_read, hooks_write = os.pipe() if with_hooks else (-1, -1)
    child = os.fork()
    if child == 0:
        os.close(go_write)
        os.close(report_read)
        if with_hooks:
            os.close(hooks_write)
        systemd.connection.close()
        container.forget_lock()
        _setup_child(config, str(container.fifo), go_read, report_write, console, preserve_fds, hooks_read)
    os.close(go_read)
    os.close(report_write)
    if with_hooks:
        os.close(hooks_read)

    def run_create_hooks(pid: int) -> None:
        document = state_of_creating(config, container.id, bundle, pid)
        for point in CREATE_HOOKS:
            oci_hooks.run(point, config.hooks, document, fatal=True)
        os.write(hooks_write, b"go")

    scope_made = False  # only ours to stop: a unit of that name may be another container's
    try:
        job = systemd.start_transient_unit(unit, scope_properties(config, container.id, slice_, child))
        scope_made = True
        systemd.wait_for_job(job, f"starting {unit}")
        os.write(go_write, b"go")
        os.close(go_write)
        go_write = -1
        init_pid = _read_report(report_read, run_create_hooks if with_hooks else None)
        os.waitpid(child, 0)
        _register_machine(systemd, container.id, init_pid, config.root)
        return init_pid
    except BaseException:
        _kill_and_reap(child)
        if scope_made:
            _stop_scope(systemd, unit)
        raise
    finally:
        if go_write >= 0:
            os.close(go_write)
        if with_hooks:
            os.close(hooks_write)
        os.close(report_read)
        systemd.close()


def state_of_creating(config: ContainerConfig, container_id: str, bundle: str, pid: int) -> dict[str, Any]:
    """The state the create hooks read on stdin."""
    return {
        "ociVersion": state.OCI_VERSION,
        "id": container_id,
        "status": "creating",
        "pid": pid,
        "bundle": bundle,
        "annotations": config.annotations,
    }


def _register_machine(systemd: Systemd, container_id: str, leader: int, root: str) -> None:
    """Show the container in `machinectl list`, as sdrun's pods are: machined adopts its scope and
    forgets it when the scope ends. Best effort: a host without machined still runs containers."""
    import hashlib

    from sdrun.debug import debug
    from sdrun.systemd import bus

    machine_id = hashlib.sha256(container_id.encode()).digest()[:16]
    try:
        bus.register_machine(systemd, container_id[:64], machine_id, leader, root, [])
    except SdrunError as error:
        debug("oci", "not registered with machined: %s", describe(error))


def _read_report(fd: int, on_hooks: Callable[[int], None] | None = None) -> int:
    """The set-up's messages, a line each: "pid N" (from the set-up child), "hooks" (the init waits
    for the create hooks: on_hooks(N) runs them), "ready" (from the init), or "error: ..."."""
    data, pid, hooks_asked, hooks_done = b"", 0, False, False
    lines: list[str] = []
    while b"ready\n" not in data and (chunk := os.read(fd, 4096)):
        data += chunk
        lines = data.decode(errors="replace").splitlines()
        pids = [int(line.split()[1]) for line in lines if line.startswith("pid ")]
        pid = pids[0] if pids else 0
        hooks_asked = "hooks" in lines
        if hooks_asked and pid and not hooks_done and on_hooks is not None:
            hooks_done = True
            on_hooks(pid)
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        raise SdrunError(errors[-1])
    if "ready" not in lines or not pid:
        raise SdrunError("container set-up failed")
    return pid


def _kill_and_reap(child: int) -> None:
    try:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _stop_scope(systemd: Systemd, unit: str) -> None:
    """SIGKILL whatever is left in the scope first: a PID namespace's init ignores the SIGTERM a
    stop would send it (no handler of its own), and the stop would wait its whole timeout."""
    with contextlib.suppress(SdrunError):
        systemd.kill_unit(unit, signal.SIGKILL, "all")
    with contextlib.suppress(SdrunError):
        systemd.stop_unit(unit)
    with contextlib.suppress(SdrunError):
        systemd.reset_failed_unit(unit)


def _setup_child(
    config: ContainerConfig,
    fifo: str,
    go_read: int,
    report: int,
    console: int | None,
    preserve_fds: int,
    hooks_go: int,
) -> NoReturn:
    """In the scope: join and make the namespaces, fork the init (PID 1 of a new PID namespace)."""
    try:
        if os.read(go_read, 2) != b"go":
            os._exit(EXIT_RUNTIME_ERROR)  # create failed to make the scope
        os.close(go_read)
        from sdrun.linux import syscalls as sc

        unshare = 0
        for namespace in config.namespaces:
            if namespace.path is None:
                unshare |= namespace.flag
            else:
                sc.setns_path(namespace.path, namespace.flag)
        sc.unshare(unshare)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # nothing the container mounts reaches the host
        init = os.fork()
        if init == 0:
            _container_init(config, fifo, report, console, preserve_fds, hooks_go)
        os.write(report, f"pid {init}\n".encode())
        os._exit(0)
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave
        _report_error(report, error)
    os._exit(EXIT_RUNTIME_ERROR)


def _report_error(report: int, error: BaseException) -> None:
    with contextlib.suppress(OSError):
        os.write(report, f"error: {describe(error)}\n".encode())


def _container_init(
    config: ContainerConfig, fifo: str, report: int, console: int | None, preserve_fds: int, hooks_go: int
) -> NoReturn:
    try:
        _prepare_init(config, fifo, report, console, preserve_fds, hooks_go)
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave
        _report_error(report, error)
    os._exit(EXIT_RUNTIME_ERROR)


def _prepare_init(
    config: ContainerConfig, fifo: str, report: int, console: int | None, preserve_fds: int, hooks_go: int
) -> None:
    from sdrun.linux import syscalls as sc
    from sdrun.linux.mounts import execute_plan
    from stage1.namespace import entry

    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # until the exec, /proc/1/exe is the host's interpreter
    if config.sysctls:
        entry._set_sysctls(list(config.sysctls))
    if config.oom_score_adj is not None:
        with open("/proc/self/oom_score_adj", "w") as stream:
            stream.write(str(config.oom_score_adj))
    if hooks_go >= 0:  # prestart and createRuntime: our namespaces exist, nothing is mounted yet
        os.write(report, b"hooks\n")
        if os.read(hooks_go, 2) != b"go":
            raise SdrunError("a create hook failed")
        os.close(hooks_go)
    root = config.root
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)  # a mount of our own, which pivot_root takes
    execute_plan([*config.mounts, *config.lockdown], root)
    if config.hostname:
        sc.sethostname(config.hostname)
    fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)  # reopened for writing after pivot_root
    entry._pivot_root(root)
    if config.terminal and console is not None:
        _take_terminal(config, console)
    os.write(report, b"ready\n")
    os.close(report)
    held = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)  # blocks until `start`
    os.write(held, b"0")
    os.close(held)
    os.close(fifo_fd)
    if config.umask is not None:
        os.umask(config.umask)
    for fd in range(3, 3 + preserve_fds):
        os.set_inheritable(fd, True)
    os.closerange(3 + preserve_fds, 2**31 - 1)  # anything else the caller left open stays out, as runc's
    entry.confine_and_exec(config.app, config.capabilities, config.seccomp, None, inheritable=0)


def _take_terminal(config: ContainerConfig, console: int) -> None:
    """A pty of the container's devpts becomes the app's controlling terminal and stdio; its
    master goes to the caller over the console socket (SCM_RIGHTS)."""
    import fcntl

    from stage1.namespace import entry

    master, slave = entry.open_pod_terminal(config.app["uid"])
    entry.send_terminal(console, master)
    os.close(console)
    os.setsid()
    fcntl.ioctl(slave, entry.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


# --- start, kill, delete ---


def open_container(
    options: Options, container_id: str, *, lock: bool = True
) -> tuple[state.ContainerDir, state.Record]:
    """lock: hold the container's lock until we exit (every verb but state, which only reads)."""
    check_id(container_id)
    container = state.ContainerDir(options.root, container_id)
    if not container.path.is_dir():
        raise NotFound(f"container '{container_id}' does not exist")
    if lock:
        container.lock()
    return container, container.read()


def start(options: Options, container_id: str) -> None:
    container, record = open_container(options, container_id)
    current = state.status(container, record)
    if current != "created":
        raise SdrunError(f"cannot start a container that is {current}")
    fd = os.open(container.fifo, os.O_RDONLY | os.O_CLOEXEC)  # the init is waiting to open it for writing
    try:
        if not os.read(fd, 1):
            raise SdrunError(f"container '{container_id}' exited before it started")
    finally:
        os.close(fd)
        container.fifo.unlink(missing_ok=True)
    if "poststart" in record.hooks:
        document = state.state_document(container, record, "running")
        oci_hooks.run("poststart", oci_hooks.from_json(record.hooks), document, fatal=False)


def signal_number(text: str) -> int:
    """15, TERM, SIGTERM or sigterm."""
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise SdrunError(f"unknown signal '{text}'") from None


def kill(options: Options, container_id: str, signal_text: str, *, all_processes: bool) -> None:
    container, record = open_container(options, container_id)
    number = signal_number(signal_text)
    if state.status(container, record) == "stopped":
        raise SdrunError("container not running")
    if all_processes:
        from sdrun.systemd.bus import Systemd

        systemd = Systemd.connect()
        try:
            systemd.kill_unit(record.unit, number, "all")
            return
        except NotFound:
            pass
        finally:
            systemd.close()
    os.kill(record.pid, number)


def delete(options: Options, container_id: str, *, force: bool) -> None:
    check_id(container_id)
    container = state.ContainerDir(options.root, container_id)
    if not container.path.is_dir():
        if force:
            return
        raise NotFound(f"container '{container_id}' does not exist")
    container.lock()
    try:
        record = container.read()
    except NotFound:
        if not force:
            raise
        container.remove()  # a create that never finished
        return
    current = state.status(container, record)
    if current != "stopped" and not force:
        raise SdrunError(f"cannot delete container {container_id} that is not stopped: {current}")
    if current != "stopped":
        os.kill(record.pid, signal.SIGKILL)  # the PID namespace's init: the kernel kills the rest
        _wait_gone(record)
    from sdrun.systemd.bus import Systemd

    systemd = Systemd.connect()
    try:
        _stop_scope(systemd, record.unit)
    finally:
        systemd.close()
    if "poststop" in record.hooks:
        document = state.state_document(container, record, "stopped")
        oci_hooks.run("poststop", oci_hooks.from_json(record.hooks), document, fatal=False)
    container.remove()


def _wait_gone(record: state.Record) -> None:
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while state.process_start_time(record.pid) == record.start_time and time.monotonic() < deadline:
        time.sleep(0.01)


# --- ps, update ---


def processes(options: Options, container_id: str) -> list[int]:
    """The pids of the container's scope, as the host sees them."""
    from sdrun.systemd.bus import Systemd

    container, record = open_container(options, container_id, lock=False)
    if state.status(container, record) == "stopped":
        return []
    systemd = Systemd.connect()
    try:
        return sorted(systemd.unit_processes(record.unit))
    finally:
        systemd.close()


def update(options: Options, container_id: str, resources_text: str) -> None:
    """update --resources: a runtime-spec LinuxResources object; what the scope can change (pids.limit
    as TasksMax=, memory.limit as MemoryMax=) is set on it, anything else refused."""
    import json

    from sdrun.oci.config import ConfigError, _refuse_unknown
    from sdrun.systemd.bus import Systemd
    from sdrun.systemd.propertytable import prop

    container, record = open_container(options, container_id)
    if state.status(container, record) == "stopped":
        raise SdrunError("container not running")
    try:
        resources = json.loads(resources_text)
        _refuse_unknown("resources.", resources, {"memory", "pids", "devices"})
        memory = resources.get("memory") or {}
        # swap: a cgroup v1 memsw limit systemd does not set; podman's update --memory passes one.
        _refuse_unknown("resources.memory.", memory, {"limit", "swap", "reservation"})
        properties = []
        if (memory.get("limit") or 0) > 0:
            properties.append(prop("MemoryMax", int(memory["limit"])))
        if ((resources.get("pids") or {}).get("limit") or 0) > 0:
            properties.append(prop("TasksMax", int(resources["pids"]["limit"])))
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise ConfigError(f"update --resources: not a valid resources object ({error})") from None
    if not properties:
        return
    systemd = Systemd.connect()
    try:
        systemd.set_unit_properties(record.unit, properties)
    finally:
        systemd.close()


# --- pause, resume ---

FREEZE_WAIT_SECONDS = 10.0


def pause(options: Options, container_id: str) -> None:
    """Freeze the container's scope (cgroup v2's cgroup.freeze, there beside the v1 hierarchies on a
    hybrid host, where systemd's FreezeUnit refuses): every process of it stops until resume."""
    _set_frozen(options, container_id, frozen=True)


def resume(options: Options, container_id: str) -> None:
    _set_frozen(options, container_id, frozen=False)


def _set_frozen(options: Options, container_id: str, *, frozen: bool) -> None:
    container, record = open_container(options, container_id)
    current = state.status(container, record)
    if current != ("running" if frozen else "paused"):
        raise SdrunError(f"cannot {'pause' if frozen else 'resume'} a container that is {current}")
    freezer = state.freezer_file(record.pid)
    if freezer is None:
        raise SdrunError("this host has no cgroup v2 freezer for the container's scope")
    with open(freezer, "w") as stream:
        stream.write("1" if frozen else "0")
    events = os.path.join(os.path.dirname(freezer), "cgroup.events")
    wanted = f"frozen {1 if frozen else 0}"
    deadline = time.monotonic() + FREEZE_WAIT_SECONDS
    while wanted not in state.read_text(events).splitlines():  # the kernel freezes asynchronously
        if time.monotonic() > deadline:
            raise SdrunError(f"the container's cgroup did not become {'frozen' if frozen else 'thawed'}")
        time.sleep(0.005)
