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

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe
from sdrun.image.pullsettings import PullSettings
from sdrun.net import on_network, release, scope_network
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore, exit_status_of, write_file_atomically
from sdrun.spec import PodSpec
from sdrun.systemd import machined, properties
from sdrun.systemd.bus import SERVICE, JobFailed, Systemd
from stage1.interface import Stage1

if TYPE_CHECKING:
    from sdrun.systemd.journal import PodJournal

CLD_CODES = {1: "exited", 2: "killed", 3: "dumped"}  # ExecMainCode: si_code of the app's SIGCHLD
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
JOURNAL_POLL_SECONDS = 0.05  # how often a foreground run looks for new lines of its app
LONE_APP_TIMEOUT = 1.0  # seconds `run -d` waits for a stage1 entry to leave the unit to its app


class RunOptions(NamedTuple):
    detach: bool = False
    remove: bool = False
    pull: PullSettings = PullSettings()


def run(paths: Paths, spec: PodSpec, options: RunOptions, output: BinaryIO) -> int:
    """Run a pod; return the exit status `sdrun run` should exit with."""
    if spec.service.listen or spec.service.healthcheck or spec.service.wanted_by:
        raise SdrunError(
            "listen, healthcheck and wanted_by need an installed unit", hint="sdrun install NAME --spec FILE"
        )
    if spec.scope and options.detach:
        raise SdrunError("--scope runs the app attached to this terminal: it cannot be --detach'ed")
    if options.remove and spec.restart != "no":  # Docker refuses it too
        raise SdrunError(
            f"--rm and --restart {spec.restart} conflict: the pod would be removed once its app first ends",
            hint="drop one of them",
        )
    backend = Stage1.named(spec.stage1)
    backend.refuse_unsupported(spec)
    systemd = Systemd.connect()  # before anything is written: no bus, nothing left behind
    store = PodStore(paths)
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
            log = _start_service(
                systemd, backend, pod, hold=True, record_exit=not options.remove, meanwhile=_open_journal(pod)
            )
            app_started = True
            return _follow_in_foreground(systemd, pod, log, output)
    except BaseException:
        if not app_started:  # nothing ran: leave nothing behind
            systemd.reset_failed_unit(pod.unit)
            store.remove(pod)
        raise
    finally:
        systemd.close()
        if options.remove and not options.detach and pod.dir.exists():
            store.remove(pod)


def _start_service(
    systemd: Systemd,
    backend: Stage1,
    pod: Pod,
    *,
    hold: bool,
    remove_when_done: Sequence[Path] = (),
    record_exit: bool = True,
    meanwhile: Callable[[], PodJournal] | None = None,
) -> PodJournal | None:
    """Start the pod's service and return once its start job is done (the app runs).
    `meanwhile` runs while systemd starts the unit (on another CPU, as a rule); its result is returned."""
    plan = backend.plan(pod)
    network_ready = _set_up_network(pod)
    try:
        unit_properties = properties.service_properties(
            pod,
            plan,
            keep_until_released=hold,
            remove_when_done=remove_when_done,
            record_exit=record_exit,
            network_ready=network_ready,
        )
        job = systemd.start_transient_unit(pod.unit, unit_properties)
    except BaseException:
        if network_ready:  # no unit, so no ExecStopPost= to tear it down
            release(pod)
        raise
    done_meanwhile = meanwhile() if meanwhile else None
    try:
        systemd.wait_for_job(job, f"starting {pod.unit}")
    except JobFailed as failure:
        if not (("Type", "s", "exec") in plan.properties and _the_app_ran(systemd, pod)):
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
    given = [flag for flag, value in limits if value is not None]
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


def _follow_in_foreground(systemd: Systemd, pod: Pod, log: PodJournal | None, output: BinaryIO) -> int:
    """Copy the app's journal lines to output until its unit is inactive; return its exit status.

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
        machined.register(systemd, pod)
        ended = systemd.check_unit_ended(pod.unit)
        while not ended:
            for key, _ in selector.select(JOURNAL_POLL_SECONDS):
                key.data()
            log.refresh()
            copy_new_lines()
            ended = systemd.unit_has_ended(pod.unit)
    main_code = systemd.unit_property(pod.unit, SERVICE, "ExecMainCode")
    main_status = systemd.unit_property(pod.unit, SERVICE, "ExecMainStatus")
    journal.synchronize()  # the app has exited; make sure its last lines are written
    log.refresh()
    copy_new_lines()
    log.close()
    return exit_status_of(CLD_CODES.get(main_code, "exited"), str(main_status))


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
    write_file_atomically(Paths.exit_record(pod.dir), record + "\n")
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
        sys.stderr.write(f"sdrun: {describe(error)}\n")
        os._exit(EXIT_RUNTIME_ERROR)
