"""`sdrun run`: a spec becomes a pod directory and a transient unit.

Three ways to run, one per function below:
* foreground (default): a service whose output we follow in the journal, so
  the app's lifetime never depends on ours; we exit with its exit status;
* detached (-d): the same service, and we return once systemd has started it;
* scope (--scope): our own child runs the app on our terminal, inside a scope.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, SpecError, describe, error_line
from sdrun.files import write_atomically
from sdrun.image.pullsettings import PullSettings
from sdrun.net import on_network, release, scope_network
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore, exit_status_of, unit_name
from sdrun.spec import PodSpec
from sdrun.systemd import machined, properties
from sdrun.systemd.bus import SERVICE, JobFailed, Systemd
from sdrun.systemd.propertytable import prop
from stage1.interface import Stage1, ensure_unit_interpreter

if TYPE_CHECKING:
    from sdrun.systemd.bus import Property
    from sdrun.systemd.journal import PodJournal
    from sdrun.terminal import TerminalRelay

CLD_CODES = {1: "exited", 2: "killed", 3: "dumped"}  # ExecMainCode: si_code of the app's SIGCHLD
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
JOURNAL_POLL_SECONDS = 0.05  # how often a foreground run looks for new lines of its app
LONE_APP_TIMEOUT = 1.0  # seconds `run -d` waits for a stage1 entry to leave the unit to its app


class RunOptions(NamedTuple):
    detach: bool = False
    remove: bool = False
    pull: PullSettings = PullSettings()
    replace: bool = False  # remove a pod of the same name first
    interactive: bool = False  # -i: the app reads our stdin
    tty: bool = False  # -t: the app gets a terminal, which we relay


class Attachment(NamedTuple):
    """What a foreground run with -i or -t hands the unit besides its spec's properties."""

    properties: tuple[Property, ...] = ()  # StandardInputFileDescriptor=, its "h" an index into fds
    fds: tuple[int, ...] = ()
    terminal: int | None = None  # -t: our end of the socket the pod's stage1 sends its terminal on
    typed: WriteEnd | None = None  # -i on a terminal: the pipe we copy its lines to, the app's stdin

    @classmethod
    def of(cls, options: RunOptions) -> Attachment:
        if options.tty:  # the unit's stdin is a socket; the app's, the terminal that comes over it
            import socket

            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            return cls((prop("StandardInputFileDescriptor", 0),), (theirs.detach(),), ours.detach())
        if options.interactive and os.isatty(0):  # not the terminal itself, which the pod could keep
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            return cls((prop("StandardInputFileDescriptor", 0),), (read_end,), typed=WriteEnd(write_end))
        if options.interactive:  # our stdin itself: a pipe or a file
            return cls((prop("StandardInputFileDescriptor", 0),), (0,))
        return cls()

    def close_given(self) -> None:
        """Close our copies of what the unit was given (systemd has its own)."""
        for fd in self.fds:
            if fd > 2:
                os.close(fd)

    def close(self) -> None:
        if self.terminal is not None:
            os.close(self.terminal)
        if self.typed is not None:
            self.typed.close()


class WriteEnd:
    """A pipe's write end that the end of input closes, once, before the run ends."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


NO_ATTACHMENT = Attachment()


def run(paths: Paths, spec: PodSpec, options: RunOptions, output: BinaryIO) -> int:
    """Run a pod; return the exit status `sdrun run` should exit with."""
    if spec.service.listen or spec.service.healthcheck or spec.service.wanted_by:
        raise SdrunError(
            "listen, healthcheck and wanted_by need an installed unit", hint="sdrun install NAME --spec FILE"
        )
    _refuse_conflicts(spec, options)
    backend = Stage1.named(spec.stage1)
    backend.refuse_unsupported(spec)
    if options.interactive and not backend.passes_stdin:
        raise SdrunError(f"-i: the {backend.name} stage1 does not give the app its stdin")
    attached = (options.interactive or options.tty) and not spec.scope  # a scope's app has our stdio
    # Before anything is written: no bus, nothing left behind.
    systemd = Systemd.connect(unix_fds=attached)
    store = PodStore(paths)
    if options.replace:
        remove_to_replace(systemd, store, spec.name)  # before the name is taken again
    if spec.image:  # find or pull the image, fold its config into the spec, record its layer trees
        from sdrun.image.usage import create_image_pod

        pod = create_image_pod(paths, store, spec, sys.stderr, options.pull)
    else:
        pod = store.create(spec)
    app_started = False
    try:
        with pod.locked():
            if spec.scope:
                with scope_network(pod):  # a scope has no ExecStartPre/ExecStopPost to do it
                    app_started = True  # from here on the child reports its own failures
                    return _run_in_scope(systemd, backend, pod)
            if options.detach:
                removal = (paths.name_link(pod.name), pod.dir) if options.remove else ()
                # A record the removal deletes at once would only cost the unit a process.
                _start_service(
                    systemd, backend, pod, hold=False, remove_when_done=removal, record_exit=not options.remove
                )
                app_started = True
                _wait_until_only_the_app_runs(systemd, pod)
                output.write(f"{pod.uuid}\n".encode())
                return 0
            systemd.watch_unit(pod.unit)  # before the unit can finish
            # With --rm the pod goes when we return, and we read the exit status from the unit
            # we hold: an exit record would cost every run a process (systemd's ExecStopPost=).
            # If this command is killed first, the pod is left without one; `sdrun gc` removes it.
            attachment = Attachment.of(options) if attached else NO_ATTACHMENT
            try:
                log = _start_service(
                    systemd,
                    backend,
                    pod,
                    hold=True,
                    record_exit=not options.remove,
                    meanwhile=_open_journal(pod),
                    attachment=attachment,
                )
                app_started = True
                return _follow_in_foreground(systemd, pod, log, output, attachment, relay_input=options.interactive)
            finally:
                attachment.close()
    except BaseException:
        if not app_started:  # nothing ran: leave nothing behind
            systemd.reset_failed_unit(pod.unit)
            store.remove(pod)
        raise
    finally:
        systemd.close()
        if options.remove and not options.detach and pod.dir.exists():
            store.remove(pod)


def _refuse_conflicts(spec: PodSpec, options: RunOptions) -> None:
    if spec.scope and options.detach:
        raise SdrunError("--scope runs the app attached to this terminal: it cannot be --detach'ed")
    if options.remove and spec.restart != "no":  # Docker refuses it too
        raise SdrunError(
            f"--rm and --restart {spec.restart} conflict: the pod would be removed once its app first ends",
            hint="drop one of them",
        )
    if (options.interactive or options.tty) and options.detach:
        raise SdrunError("-i and -t attach the app to this command: not with --detach")
    if options.tty and spec.restart != "no":
        raise SdrunError(f"-t and --restart {spec.restart} conflict: a restarted app would have no terminal")


def _start_service(
    systemd: Systemd,
    backend: Stage1,
    pod: Pod,
    *,
    hold: bool,
    remove_when_done: Sequence[Path] = (),
    record_exit: bool = True,
    meanwhile: Callable[[], PodJournal] | None = None,
    attachment: Attachment = NO_ATTACHMENT,
    slice_unit: str = properties.SLICE,
) -> PodJournal | None:
    """Start the pod's service and return once its start job is done (the app runs).
    `meanwhile` runs while systemd starts the unit (on another CPU, as a rule); its result is returned."""
    plan = backend.plan(pod) if attachment.terminal is None else backend.terminal_plan(pod)
    ensure_unit_interpreter(plan)
    network_ready = _set_up_network(pod)
    try:
        unit_properties = properties.service_properties(
            pod,
            plan,
            keep_until_released=hold,
            remove_when_done=remove_when_done,
            record_exit=record_exit,
            network_ready=network_ready,
            slice_unit=slice_unit,
        )
        job = systemd.start_transient_unit(pod.unit, [*unit_properties, *attachment.properties], attachment.fds)
    except BaseException:
        if network_ready:  # no unit, so no ExecStopPost= to tear it down
            release(pod)
        raise
    finally:
        attachment.close_given()
    done_meanwhile = meanwhile() if meanwhile else None
    try:
        systemd.wait_for_job(job, f"starting {pod.unit}")
    except JobFailed as failure:
        if not (prop("Type", "exec") in plan.properties and _the_app_ran(systemd, pod)):
            complaint, killed = _first_complaint(pod), _killed(systemd, pod)
            if pod.spec.restart != "no":  # else systemd starts it again, and keeps it once it gives up
                systemd.stop_unit(pod.unit)
            hint = _limits_hint(pod.spec) if killed or _out_of_resources(complaint) else None
            raise SdrunError(
                f"{pod.unit} failed to start: {complaint or killed or failure.message}", hint=hint
            ) from None
    if not hold:  # a foreground run registers once it forwards signals: see _follow_in_foreground
        machined.register(systemd, pod)  # best effort; machined forgets it when the unit stops
    return done_meanwhile


def _set_up_network(pod: Pod) -> bool:
    """Set up a pod's network here, before its unit exists, when the unit starts only once: in
    this process, whose Python runs already, it costs a start ~50 ms less than the unit's
    ExecStartPre= would (an interpreter and its imports). A unit that restarts sets it up
    again at each start, with the hook; so does one started from a mount namespace other than
    systemd's (the pod's namespace name would not reach the unit). True if it was set up here."""
    if not on_network(pod.spec) or pod.spec.restart != "no" or not _in_systemds_mount_namespace():
        return False
    from sdrun.net.pod import setup

    setup(Paths.root_of(pod.dir), pod)
    return True


def _in_systemds_mount_namespace() -> bool:
    """Whether this process shares the mount namespace of PID 1 (the systemd we talk to, or a
    harness's whose PID namespace this is). A mount made under /run/netns elsewhere, in a
    namespace that does not propagate back (unshare -m, a unit's PrivateMounts=), stays there."""
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False


# systemd's own exit statuses for a process that failed before its exec (EXIT_CHDIR, EXIT_EXEC,
# EXIT_USER...: systemd.exec(5), "Process Exit Codes").
SPAWN_FAILURES = range(200, 244)
CLD_EXITED = 1


def _the_app_ran(systemd: Systemd, pod: Pod) -> bool:
    """Whether a Type=exec unit whose start job failed did exec its app. systemd 252 handles a main
    process's exit before the news of its exec when both are pending: an app that fails at once
    fails its start job too, though it ran (then it is no start failure, as for a stage1 that said
    READY=1). Only systemd's own statuses tell of a failure before the exec."""
    try:
        exited = int(systemd.unit_property(pod.unit, SERVICE, "ExecMainCode")) == CLD_EXITED
        status = str(systemd.unit_property(pod.unit, SERVICE, "ExecMainStatus"))
    except SdrunError:  # collected already (run -d): the exit record tells, if the pod is still there
        record = pod.exit_record()
        if record is None:
            return True  # stage0 checked what systemd would (executable, user): the likely case
        exited, status = record.code == "exited", record.status
    return not (exited and status.isdigit() and int(status) in SPAWN_FAILURES)


def _wait_until_only_the_app_runs(systemd: Systemd, pod: Pod) -> None:
    """A stage1 entry that does not become the app tells systemd the app's PID (MAINPID=), and
    systemd reports the unit started while the entry is still on its way out. Return once it
    is gone, so that `run -d` leaves nothing of sdrun's beside the app (and its children). A Type=exec
    unit whose main process is the app (fly's --rootfs pods) passes the first check."""
    import time

    deadline = time.monotonic() + LONE_APP_TIMEOUT
    try:
        main_pid = int(systemd.unit_property(pod.unit, SERVICE, "MainPID"))
        while main_pid and not all(_descends_from(pid, main_pid) for pid in systemd.unit_processes(pod.unit)):
            if time.monotonic() > deadline:
                return  # something of the stage1's own design stays: not ours to wait for
            time.sleep(0.002)
    except SdrunError:  # the app has ended already, and its unit is gone: nothing is left in it
        return


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether pid is ancestor or one of its descendants (a process gone meanwhile counts)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                pid = int(stat.read().rsplit(b")", 1)[1].split()[1])  # the field after the state: PPid
        except (OSError, IndexError, ValueError):
            return True
    return False


def _open_journal(pod: Pod) -> Callable[[], PodJournal]:
    def open_journal() -> PodJournal:
        from sdrun.systemd import journal  # python-systemd: imported while systemd starts the unit

        log = journal.PodJournal(pod.uuid)
        log.seek_head()  # the UUID is new: every entry that matches is this run's
        return log

    return open_journal


def _killed(systemd: Systemd, pod: Pod) -> str | None:
    """Why a start that logged nothing failed, if a signal did it (the kernel's OOM killer, say)."""
    try:
        result = systemd.unit_property(pod.unit, SERVICE, "Result")
    except SdrunError:  # collected already (run -d)
        return None
    if result == "oom-kill":
        return "its set-up ran out of memory"
    return "its set-up was killed by a signal" if result == "signal" else None


def _out_of_resources(complaint: str | None) -> bool:
    """Whether a set-up's complaint is a fork or an allocation refused (EAGAIN, ENOMEM)."""
    return complaint is not None and any(os.strerror(number) in complaint for number in (errno.EAGAIN, errno.ENOMEM))


def _limits_hint(spec: PodSpec) -> str | None:
    """sdrun's own set-up (the network's, the stage1's) runs in the unit, under the pod's limits."""
    limits = (("--memory", spec.resources.memory), ("--pids-limit", spec.resources.pids))
    given = [flag for flag, value in limits if value]  # --pids-limit 0 is no limit at all
    if not given:
        return None
    return f"the pod's set-up runs under its {' and '.join(given)} too: a little more may be what it needs"


def _first_complaint(pod: Pod) -> str | None:
    """What the pod's unit logged first: a stage1 that cannot set the pod up says why there,
    and its first line names the cause, later ones the consequences."""
    from sdrun.systemd import journal

    journal.synchronize()
    log = journal.PodJournal(pod.uuid)
    log.seek_head()
    first = next(log.entries(), None)
    log.close()
    return first.message.decode(errors="replace").strip() if first else None


def _follow_in_foreground(
    systemd: Systemd,
    pod: Pod,
    log: PodJournal | None,
    output: BinaryIO,
    attachment: Attachment = NO_ATTACHMENT,
    *,
    relay_input: bool = False,
) -> int:
    """Copy the app's journal lines to output until its unit is inactive; return its exit status.
    With -t, the pod's terminal, once its stage1 sends it, is relayed to ours (our stdin to it with
    relay_input); with -i on a terminal, what is typed goes to the app's stdin, a pipe.

    The journal is polled, not watched: journald tells inotify watchers of new lines only
    ~300 ms after it wrote them (it batches its notifications), a poll sees them at once,
    and a reader without inotify watches closes ~10 ms faster, which every run pays."""
    from sdrun.systemd import journal

    assert log is not None

    def copy_new_lines() -> None:
        for entry in log.entries():
            output.write(entry.message + b"\n")
        output.flush()

    with SignalProxy(systemd, pod.unit) as proxy, selectors.DefaultSelector() as selector:
        selector.register(systemd.fileno(), selectors.EVENT_READ, systemd.dispatch_pending)
        selector.register(proxy.fileno(), selectors.EVENT_READ, proxy.forward_pending)
        relay = None
        if attachment.terminal is not None:
            relay = _TerminalAttachment(selector, attachment.terminal, relay_input=relay_input)
        if attachment.typed is not None:
            selector.register(0, selectors.EVENT_READ, _copy_typed_lines(selector, attachment.typed))
        machined.register(systemd, pod)
        try:
            ended = systemd.check_unit_ended(pod.unit)
            while not ended:
                for key, _ in selector.select(JOURNAL_POLL_SECONDS):
                    key.data()
                log.refresh()
                copy_new_lines()
                ended = systemd.unit_has_ended(pod.unit)
        finally:
            if relay is not None:
                relay.close()
    main_code = systemd.unit_property(pod.unit, SERVICE, "ExecMainCode")
    main_status = systemd.unit_property(pod.unit, SERVICE, "ExecMainStatus")
    journal.synchronize()  # the app has exited; make sure its last lines are written
    log.refresh()
    copy_new_lines()
    log.close()
    return exit_status_of(CLD_CODES.get(main_code, "exited"), str(main_status))


def _copy_typed_lines(selector: selectors.BaseSelector, pipe: WriteEnd) -> Callable[[], None]:
    """`run -i` on a terminal: what the terminal gives us (a line, in its cooked mode) goes to the
    app's stdin; its end (^D), or an app that closed its stdin, closes the pipe."""

    def end_of_input() -> None:
        selector.unregister(0)
        pipe.close()

    def copy() -> None:
        typed = os.read(0, 65536)
        if not typed or pipe.fd is None:
            end_of_input()
            return
        try:
            while typed:
                typed = typed[os.write(pipe.fd, typed) :]
        except BrokenPipeError:
            end_of_input()

    return copy


class _TerminalAttachment:
    """`run -t` in the foreground loop: once the pod's stage1 sends its terminal's master, relay
    it to our stdout (and our stdin to it, with relay_input) until the app has ended."""

    def __init__(self, selector: selectors.BaseSelector, channel: int, *, relay_input: bool) -> None:
        self.selector = selector
        self.channel = channel
        self.relay_input = relay_input
        self.relay: TerminalRelay | None = None
        selector.register(channel, selectors.EVENT_READ, self._take_terminal)

    def _take_terminal(self) -> None:
        from sdrun.terminal import TerminalRelay, receive_terminal

        self.selector.unregister(self.channel)
        master = receive_terminal(self.channel)
        if master is None:
            return
        self.relay = TerminalRelay(master).__enter__()
        self.selector.register(master, selectors.EVENT_READ, self._copy_output)
        if self.relay_input:
            try:
                self.selector.register(0, selectors.EVENT_READ, self._copy_input)
            except PermissionError:  # a regular file, which epoll cannot wait on: it is all there
                while self.relay.copy_input():
                    pass

    def _copy_output(self) -> None:
        assert self.relay is not None
        if not self.relay.copy_output():
            self.selector.unregister(self.relay.master)

    def _copy_input(self) -> None:
        assert self.relay is not None
        if not self.relay.copy_input():
            self.selector.unregister(0)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.copy_output()  # what the app wrote last
            self.relay.__exit__()


class SignalProxy:
    """As podman's sig-proxy: a signal to `sdrun run` goes to the app, which decides what happens.
    An app that is PID 1 of its namespace ignores signals it has no handler for, so a second
    signal asks systemd to stop the unit (stop signal, then SIGKILL after the stop timeout).

    The handlers only note the signal (through Python's wakeup fd); forward_pending, called
    from the caller's loop when fileno() is readable, talks to systemd."""

    def __init__(self, systemd: Systemd, unit: str) -> None:
        self.systemd = systemd
        self.unit = unit
        self.received = 0
        self._read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup_fd = -1

    def __enter__(self) -> SignalProxy:
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_end)
        for number in FORWARDED_SIGNALS:
            self._previous_handlers[number] = signal.signal(number, lambda _number, _frame: None)
        return self

    def __exit__(self, *_: object) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_end)
        os.close(self._write_end)

    def fileno(self) -> int:
        return self._read_end

    def forward_pending(self) -> None:
        try:
            numbers = os.read(self._read_end, 64)
        except BlockingIOError:
            return
        for number in numbers:
            if number not in FORWARDED_SIGNALS:  # another handler's (run -t's SIGWINCH) shares the wakeup fd
                continue
            self.received += 1
            if self.received == 1:
                self.systemd.kill_unit(self.unit, number, "main")
            else:
                self.systemd.stop_unit(self.unit)


def _run_in_scope(systemd: Systemd, backend: Stage1, pod: Pod) -> int:
    go_read, go_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_write)
        _scope_child(backend, pod, go_read)
    os.close(go_read)
    try:
        scope = properties.scope_properties(pod, child, backend.scope_properties(pod))
        systemd.wait_for_job(systemd.start_transient_unit(pod.unit, scope), f"starting {pod.unit}")
    except BaseException:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        raise
    os.write(go_write, b"go")
    os.close(go_write)
    exit_status = os.waitstatus_to_exitcode(_wait_passing_signals_on(child))
    # As systemd tells ExecStopPost= for a service: $SERVICE_RESULT $EXIT_CODE $EXIT_STATUS.
    if exit_status >= 0:
        record = f"{'success' if exit_status == 0 else 'exit-code'} exited {exit_status}"
    else:
        record = f"signal killed {signal.Signals(-exit_status).name.removeprefix('SIG')}"
    write_atomically(Paths.exit_record(pod.dir), record + "\n")
    return exit_status if exit_status >= 0 else 128 - exit_status


def _wait_passing_signals_on(child: int) -> int:
    """waitpid() for the scope's child; SIGINT, SIGTERM and SIGHUP that another process sends us
    (kill(1), a supervisor) go on to it, as podman's sig-proxy. One our terminal sends (Ctrl-C:
    si_code SI_KERNEL) reached the child's process group, the child included, already: never twice."""
    waited = {signal.SIGCHLD, *FORWARDED_SIGNALS}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, waited)  # pending until sigwaitinfo takes them
    try:
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                return status
            received = signal.sigwaitinfo(waited)
            if received.si_signo != signal.SIGCHLD and received.si_code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL
                os.kill(child, received.si_signo)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _scope_child(backend: Stage1, pod: Pod, go_read: int) -> None:
    """In the forked child: wait until we are in the scope, then become the app."""
    try:
        if os.read(go_read, 2) != b"go":
            os._exit(EXIT_RUNTIME_ERROR)  # the parent failed to create the scope
        from stage1.process import close_all_but_stdio

        close_all_but_stdio()  # the app gets the terminal, and no other descriptor of ours (the bus...)
        backend.exec_in_scope(pod)
    except BaseException as error:  # noqa: BLE001 - we are a forked child: report and leave
        sys.stderr.write(error_line(describe(error)))
        os._exit(EXIT_RUNTIME_ERROR)


# --- a pod that exists: start it again, restart it, replace it ---


def start_existing(systemd: Systemd, pod: Pod) -> None:
    """Start an ended pod again, as `run -d` first started it: its unit is gone (or failed), its
    directory keeps its spec, UUID, name and writable layer, and the unit is made anew from them.
    An installed pod's unit file is systemd's to start."""
    if _installed_unit(systemd, pod):
        _refuse_running(systemd, pod)
        from sdrun.systemd import bus

        bus.start_unit(systemd, pod.unit)
        return
    if pod.spec.scope:
        raise SdrunError(
            f"pod '{pod.name}' ran in a scope, as a child of its 'sdrun run': it cannot be started again",
            hint=f"'sdrun rm {pod.name}', then run it again",
        )
    with pod.locked():
        _refuse_running(systemd, pod)
        systemd.reset_failed_unit(pod.unit)  # a restarting pod's unit stays failed once systemd gave up
        Paths.exit_record(pod.dir).unlink(missing_ok=True)  # of the last run: this one writes its own
        _start_service(systemd, Stage1.named(pod.spec.stage1), pod, hold=False)
        _wait_until_only_the_app_runs(systemd, pod)


def restart_existing(systemd: Systemd, pod: Pod) -> None:
    """Stop the pod if it runs, then start it again (an installed one: systemd's RestartUnit)."""
    if _installed_unit(systemd, pod):
        from sdrun.systemd import bus

        bus.restart_unit(systemd, pod.unit, wait=True)
        return
    systemd.stop_unit(pod.unit)
    start_existing(systemd, pod)


def remove_to_replace(systemd: Systemd, store: PodStore, name: str) -> None:
    """`run --replace`: remove the pod of that name, if there is one, running or not."""
    pod = store.named(name)
    if pod is None:
        return
    if _installed_unit(systemd, pod):
        raise SdrunError(
            f"pod '{name}' is an installed unit: 'run --replace' does not replace it",
            hint=f"'sdrun install --replace {name} ...', or 'sdrun uninstall {name}'",
        )
    from sdrun import manage

    manage.remove(systemd, store, pod, force=True)


def installed_unit_named(systemd: Systemd, name: str) -> bool:
    """Whether an installed pod of that name has a unit file systemd loads."""
    from sdrun.spec import parse_name

    try:
        parse_name(name)
    except SpecError:
        return False
    return _installed_unit_file(systemd, unit_name(name, "service"))


def start_unit_file(systemd: Systemd, name: str, *, restart: bool) -> None:
    """start or restart of an installed pod that has no pod directory (it has never started)."""
    from sdrun.systemd import bus

    if restart:
        bus.restart_unit(systemd, unit_name(name, "service"), wait=True)
    else:
        bus.start_unit(systemd, unit_name(name, "service"))


def _refuse_running(systemd: Systemd, pod: Pod) -> None:
    from sdrun import manage

    if manage.view(systemd, pod).running:
        raise SdrunError(f"pod '{pod.name}' is running", hint=f"'sdrun restart {pod.name}' stops it first")


def _installed_unit(systemd: Systemd, pod: Pod) -> bool:
    """Whether the pod's unit is a unit file systemd loads (sdrun install, the generator), not
    a transient unit of `sdrun run`, which goes with the pod's end."""
    return _installed_unit_file(systemd, pod.unit)


def _installed_unit_file(systemd: Systemd, unit: str) -> bool:
    from sdrun.errors import NotFound
    from sdrun.systemd.bus import UNIT

    try:
        loaded = systemd.unit_property(unit, UNIT, "LoadState") == "loaded"
        return loaded and not systemd.unit_property(unit, UNIT, "Transient")
    except NotFound:
        return False
