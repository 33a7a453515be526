"""`sdrun run`: a spec becomes a pod directory and a transient unit.

Three ways to run, one per function below:
* foreground (default): a service whose output we follow in the journal, so
  the app's lifetime never depends on ours; we exit with its exit status;
* detached (-d): the same service, and we return once systemd has started it;
* scope (--scope): our own child runs the app on our terminal, inside a scope.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe
from sdrun.net import scope_network
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore, exit_status_of, write_file_atomically
from sdrun.spec import PodSpec
from sdrun.systemd import machined, properties
from sdrun.systemd.bus import SERVICE, JobFailed, Systemd
from stage1.interface import Stage1

CLD_CODES = {1: "exited", 2: "killed", 3: "dumped"}  # ExecMainCode: si_code of the app's SIGCHLD
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class RunOptions:
    detach: bool = False
    remove: bool = False


async def run(paths: Paths, spec: PodSpec, options: RunOptions, output: BinaryIO) -> int:
    """Run a pod; return the exit status `sdrun run` should exit with."""
    if spec.service.listen or spec.service.healthcheck or spec.service.wanted_by:
        raise SdrunError(
            "listen, healthcheck and wanted_by need an installed unit", hint="sdrun install NAME --spec FILE"
        )
    backend = Stage1.named(spec.stage1)
    systemd = await Systemd.connect()  # before anything is written: no bus, nothing left behind
    store = PodStore(paths)
    if spec.image:  # find or pull the image, fold its config into the spec, record its layer trees
        from sdrun.image.usage import create_image_pod

        pod = create_image_pod(paths, store, spec, sys.stderr)
    else:
        pod = store.create(spec)
    app_started = False
    try:
        with pod.locked():
            if spec.scope:
                with scope_network(pod):  # a scope has no ExecStartPre/ExecStopPost to do it
                    app_started = True  # from here on the child reports its own failures
                    return await _run_in_scope(systemd, backend, pod)
            if options.detach:
                removal = (paths.name_link(pod.name), pod.dir) if options.remove else ()
                await _start_service(systemd, backend, pod, hold=False, remove_when_done=removal)
                app_started = True
                output.write(f"{pod.uuid}\n".encode())
                return 0
            finished = await systemd.watch_unit(pod.unit)  # before the unit can finish
            await _start_service(systemd, backend, pod, hold=True)
            app_started = True
            return await _follow_in_foreground(systemd, pod, finished, output)
    except BaseException:
        if not app_started:  # nothing ran: leave nothing behind
            await systemd.reset_failed_unit(pod.unit)
            store.remove(pod)
        raise
    finally:
        systemd.close()
        if options.remove and not options.detach and pod.dir.exists():
            store.remove(pod)


async def _start_service(
    systemd: Systemd, backend: Stage1, pod: Pod, *, hold: bool, remove_when_done: Sequence[Path] = ()
) -> None:
    plan = backend.plan(pod)
    unit_properties = properties.service_properties(
        pod, plan, keep_until_released=hold, remove_when_done=remove_when_done
    )
    try:
        await systemd.start_transient_unit(pod.unit, unit_properties)
    except JobFailed as failure:
        raise SdrunError(f"{pod.unit} failed to start: {_first_complaint(pod) or failure.message}") from None
    if not hold:  # a foreground run registers once it forwards signals: see _follow_in_foreground
        await machined.register(systemd, pod, wait=False)  # best effort; machined forgets it when the unit stops


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


async def _follow_in_foreground(systemd: Systemd, pod: Pod, finished: asyncio.Event, output: BinaryIO) -> int:
    """Copy the app's journal lines to output until its unit is inactive; return its exit status."""
    from sdrun.systemd import journal

    log = journal.PodJournal(pod.uuid)
    log.seek_head()  # the UUID is new: every entry that matches is this run's

    def copy_new_lines() -> None:
        log.process_events()
        for entry in log.entries():
            output.write(entry.message + b"\n")
        output.flush()

    loop = asyncio.get_running_loop()
    loop.add_reader(log.fileno(), copy_new_lines)
    proxy = SignalProxy(systemd, pod.unit)
    for number in FORWARDED_SIGNALS:
        loop.add_signal_handler(number, proxy, number)
    try:
        await machined.register(systemd, pod, wait=False)
        await systemd.wait_until_inactive(pod.unit, finished)
        main_code = await systemd.unit_property(pod.unit, SERVICE, "ExecMainCode")
        main_status = await systemd.unit_property(pod.unit, SERVICE, "ExecMainStatus")
    finally:
        loop.remove_reader(log.fileno())
        for number in FORWARDED_SIGNALS:
            loop.remove_signal_handler(number)
    journal.synchronize()  # the app has exited; make sure its last lines are written
    copy_new_lines()
    log.close()
    return exit_status_of(CLD_CODES.get(main_code, "exited"), str(main_status))


class SignalProxy:
    """As podman's sig-proxy: a signal to `sdrun run` goes to the app, which decides what happens.
    An app that is PID 1 of its namespace ignores signals it has no handler for, so a second
    signal asks systemd to stop the unit (stop signal, then SIGKILL after the stop timeout)."""

    def __init__(self, systemd: Systemd, unit: str) -> None:
        self.systemd = systemd
        self.unit = unit
        self.received = 0
        self._pending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def __call__(self, number: int) -> None:
        self.received += 1
        if self.received == 1:
            action = self.systemd.kill_unit(self.unit, number, "main")
        else:
            action = self.systemd.stop_unit(self.unit)
        task = asyncio.ensure_future(action)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _run_in_scope(systemd: Systemd, backend: Stage1, pod: Pod) -> int:
    go_read, go_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_write)
        _scope_child(backend, pod, go_read)
    os.close(go_read)
    try:
        await systemd.start_transient_unit(pod.unit, properties.scope_properties(pod, child))
    except BaseException:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        raise
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in FORWARDED_SIGNALS}
    try:
        os.write(go_write, b"go")
        os.close(go_write)
        _, status = os.waitpid(child, 0)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    exit_status = os.waitstatus_to_exitcode(status)
    record = f"exited exited {exit_status}" if exit_status >= 0 else f"signal killed {-exit_status}"
    write_file_atomically(Paths.exit_record(pod.dir), record + "\n")
    return exit_status if exit_status >= 0 else 128 - exit_status


def _scope_child(backend: Stage1, pod: Pod, go_read: int) -> None:
    """In the forked child: wait until we are in the scope, then become the app."""
    try:
        if os.read(go_read, 2) != b"go":
            os._exit(EXIT_RUNTIME_ERROR)  # the parent failed to create the scope
        os.close(go_read)
        backend.exec_in_scope(pod)
    except BaseException as error:  # noqa: BLE001 - we are a forked child: report and leave
        sys.stderr.write(f"sdrun: {describe(error)}\n")
        os._exit(EXIT_RUNTIME_ERROR)
