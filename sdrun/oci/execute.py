"""`exec`: a process.json's process in a running container, as a descendant of the caller.

The set-up child is attached to the container's scope (AttachProcessesToUnit: the scope has
Delegate=yes), joins the init's namespaces (stage1.namespace.enter.join_namespaces), and forks
the process, which is confined as the container is (its capabilities from process.json, the
container's seccomp filter, no_new_privs) and execs. With --detach the set-up child exits at
once and the process is re-parented to the caller (a subreaper, as conmon is); without, we are
the subreaper, wait for it and exit with its status.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, NoReturn

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError
from sdrun.oci import state
from sdrun.oci.lifecycle import Options, _connect_console, _read_report, _report_error, open_container

if TYPE_CHECKING:
    from stage1.process import AppPlan


class ExecRequest:
    def __init__(
        self, process_file: str, *, detach: bool, pid_file: str | None, console_socket: str | None, preserve_fds: int
    ) -> None:
        self.process_file = process_file
        self.detach = detach
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.preserve_fds = preserve_fds


def read_process(path: str) -> tuple[AppPlan, int, bool]:
    """(the app, its capability mask, whether it wants a terminal) from a runtime-spec process object."""
    from sdrun.linux import caps
    from sdrun.oci.config import KNOWN_PROCESS, ConfigError, _app, _capabilities, _refuse_unknown

    try:
        with open(path) as stream:
            process: dict[str, Any] = json.load(stream)
        _refuse_unknown("process.", process, KNOWN_PROCESS)
        user = process.get("user") or {}
        _refuse_unknown("process.user.", user, {"uid", "gid", "umask", "additionalGids"})
        return _app(process, user), caps.mask(_capabilities(process)), bool(process.get("terminal"))
    except OSError as error:
        raise ConfigError(f"cannot read process {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"process {path} is malformed: {type(error).__name__}: {error}") from None


def exec_process(options: Options, container_id: str, request: ExecRequest) -> int:
    """The exit status to leave with: 0 once a --detach'ed process runs, else the process's own."""
    from sdrun.linux import syscalls as sc
    from sdrun.systemd.bus import Systemd

    container, record = open_container(options, container_id, lock=False)
    if state.status(container, record) != "running":
        raise SdrunError(f"cannot exec in a container that is {state.status(container, record)}")
    app, capabilities, terminal = read_process(request.process_file)
    seccomp_file = container.path / state.SECCOMP
    seccomp = seccomp_file.read_bytes() if seccomp_file.exists() else None
    console = _connect_console(request.console_socket) if terminal else None
    if not request.detach:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # the process is re-parented to us when the set-up child exits
    systemd = Systemd.connect()
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_write)
        os.close(report_read)
        systemd.connection.close()
        _setup(record.pid, app, capabilities, seccomp, console, request.preserve_fds, go_read, report_write)
    os.close(go_read)
    os.close(report_write)
    try:
        systemd.attach_processes(record.unit, [child])
        os.write(go_write, b"go")
        pid = _read_report(report_read)
        os.waitpid(child, 0)
    except BaseException:
        from sdrun.oci.lifecycle import _kill_and_reap

        _kill_and_reap(child)
        raise
    finally:
        os.close(go_write)
        os.close(report_read)
        systemd.close()
        if console is not None:
            os.close(console)
    if request.pid_file:
        from sdrun.files import write_atomically

        write_atomically(request.pid_file, str(pid))
    if request.detach:
        return 0
    from stage1.namespace.entry import exit_status

    _, status = os.waitpid(pid, 0)
    return exit_status(status)


def _setup(
    leader: int,
    app: AppPlan,
    capabilities: int,
    seccomp: bytes | None,
    console: int | None,
    preserve_fds: int,
    go_read: int,
    report: int,
) -> NoReturn:
    try:
        if os.read(go_read, 2) != b"go":
            os._exit(EXIT_RUNTIME_ERROR)
        from stage1.namespace.enter import join_namespaces
        from stage1.process import set_resource_limits

        set_resource_limits(app)
        join_namespaces(leader)
        process = os.fork()
        if process == 0:
            _become_process(app, capabilities, seccomp, console, preserve_fds, report)
        os.write(report, f"pid {process}\nready\n".encode())
        os._exit(0)
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave
        _report_error(report, error)
    os._exit(EXIT_RUNTIME_ERROR)


def _become_process(
    app: AppPlan, capabilities: int, seccomp: bytes | None, console: int | None, preserve_fds: int, report: int
) -> NoReturn:
    try:
        from sdrun.linux import syscalls as sc
        from stage1.namespace import entry

        sc.prctl(sc.PR_SET_DUMPABLE, 0)  # the host's interpreter and fds, until the exec
        os.setsid()
        if console is not None:
            import fcntl

            master, slave = entry.open_pod_terminal(app["uid"])
            entry.send_terminal(console, master)
            os.close(console)
            fcntl.ioctl(slave, entry.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.close(slave)
        os.close(report)
        for fd in range(3, 3 + preserve_fds):
            os.set_inheritable(fd, True)
        os.closerange(3 + preserve_fds, 2**31 - 1)  # anything else the caller left open stays out, as runc's
        entry.confine_and_exec(app, capabilities, seccomp, None, inheritable=0)
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave
        _report_error(report, error)
    os._exit(EXIT_RUNTIME_ERROR)
