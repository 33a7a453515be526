"""The lifecycle verbs after `run`: list, status, stop, kill, rm, gc, enter.

There is no daemon to ask: a pod's state is its directory joined with what
systemd reports about its unit.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from typing import TYPE_CHECKING, Any, NamedTuple

from sdrun.errors import NotFound, SdrunError, describe, error_line
from sdrun.net import collect_garbage, pod_address, release
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore
from sdrun.systemd.bus import SERVICE, UNIT, Systemd, UnitStatus
from stage1.interface import EnterTerminal, Stage1

if TYPE_CHECKING:
    from stage1.process import AppChanges

UNIT_PATTERNS = ("sdrun-*.service", "sdrun-*.scope")
ACTIVE_STATES = ("active", "activating", "deactivating", "reloading")


class PodView(NamedTuple):
    """A pod as `list` and `status` show it."""

    pod: Pod
    unit: UnitStatus | None
    failure: str | None = None  # systemd's Result of a unit it gave up restarting (start-limit-hit)
    restarts: int | None = None  # systemd's NRestarts of a restarting pod's unit, while it is loaded

    @property
    def state(self) -> str:
        if self.unit is not None and self.unit.active_state in ACTIVE_STATES:
            return {"active": "running", "activating": "starting", "deactivating": "stopping"}.get(
                self.unit.active_state, self.unit.active_state
            )
        if self.failure is not None:  # the exit record tells of the last run, not of the give-up
            return "failed"
        record = self.pod.exit_record()
        if record is None:
            return "failed" if self.unit is not None and self.unit.active_state == "failed" else "created"
        return "exited" if record.result in ("success", "exit-code", "signal") else "failed"

    @property
    def running(self) -> bool:
        return self.state in ("running", "starting", "stopping")

    def to_json(self) -> dict[str, Any]:
        record = self.pod.exit_record()
        spec = self.pod.spec
        return {
            "uuid": self.pod.uuid,
            "name": self.pod.name,
            "state": self.state,
            "unit": self.pod.unit,
            "sub_state": self.unit.sub_state if self.unit else None,
            "exit_status": record.exit_status if record else None,
            "result": self.failure or (record.result if record else None),
            "stage1": spec.stage1,
            "image": spec.image,
            "rootfs": spec.rootfs,
            "command": list(spec.app.argv),
            "created": self.pod.created,
            "labels": spec.labels,
            "network": spec.net,
            "ip": pod_address(self.pod),
            "ports": [str(port) for port in spec.ports],
            "health": self.health,
            "restarts": self.restarts,
            "oom_killed": "oom-kill" in (self.failure, record.result if record else None),
        }

    @property
    def health(self) -> str | None:
        """A health-checked pod's, while it runs: its last check's verdict, `starting` before the first."""
        if not self.pod.spec.service.healthcheck or not self.running:
            return None
        try:
            status = Paths.health_record(self.pod.dir).read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return "starting"
        return "healthy" if status == "0" else "unhealthy"


def views(systemd: Systemd, pods: list[Pod]) -> list[PodView]:
    units = {unit.name: unit for unit in systemd.list_units(UNIT_PATTERNS)}
    return [_view(systemd, pod, units.get(pod.unit)) for pod in pods]


def view(systemd: Systemd, pod: Pod) -> PodView:
    units = systemd.list_units([pod.unit])
    return _view(systemd, pod, units[0] if units else None)


def _view(systemd: Systemd, pod: Pod, unit: UnitStatus | None) -> PodView:
    return PodView(pod, unit, _failure(systemd, pod, unit), _restarts(systemd, pod, unit))


def _restarts(systemd: Systemd, pod: Pod, unit: UnitStatus | None) -> int | None:
    """How often systemd restarted the pod's app (Restart=), as its unit counts: a unit made anew
    (start, restart) counts from 0. None for a pod that does not restart, or has no unit."""
    if pod.spec.restart == "no" or unit is None or pod.spec.scope:
        return None
    with contextlib.suppress(NotFound):
        return int(systemd.unit_property(unit.name, SERVICE, "NRestarts"))
    return None


def _failure(systemd: Systemd, pod: Pod, unit: UnitStatus | None) -> str | None:
    """Why systemd stopped restarting the pod, if it did: only a restarting pod's unit stays
    failed (properties._collect_mode), and only the unit tells (ExecStopPost= did not run)."""
    if pod.spec.restart == "no" or unit is None or unit.active_state != "failed":
        return None
    with contextlib.suppress(NotFound):
        result = str(systemd.unit_property(unit.name, SERVICE, "Result"))
        return START_LIMIT_HIT if _start_refused(systemd, unit.name) else result
    return None  # collected meanwhile


START_LIMIT_HIT = "start-limit-hit"


def _start_refused(systemd: Systemd, unit: str) -> bool:
    """Whether the unit's last start never reached its exec: systemd tested its conditions (as
    every start does, then its start limit) after the app's last exec. Its Result cannot say so:
    systemd keeps the first failure's, exit-code say, over start-limit-hit (systemd#32203)."""
    tested = int(systemd.unit_property(unit, UNIT, "ConditionTimestampMonotonic") or 0)
    executed = int(systemd.unit_property(unit, SERVICE, "ExecMainStartTimestampMonotonic") or 0)
    return tested > executed


def status_details(systemd: Systemd, pod: Pod) -> dict[str, Any]:
    details = view(systemd, pod).to_json()
    # The app's environment is the stage1's to apply at its exec, not the unit's Environment=
    # (which would reach sdrun's own processes on the host too): shown here instead.
    details["env"] = pod.spec.app.env
    details["private_users"] = _uid_range(pod)
    details["main_pid"] = None
    if details["state"] in ("running", "starting", "stopping") and not pod.spec.scope:
        with contextlib.suppress(NotFound):
            service = systemd.unit_properties(pod.unit, SERVICE)
            details["main_pid"] = service.get("MainPID") or None
            details["memory_bytes"] = _known(service.get("MemoryCurrent"))
            details["tasks"] = _known(service.get("TasksCurrent"))
    return details


def _uid_range(pod: Pod) -> str | None:
    """BASE:COUNT, the host uids (and gids) the pod's user namespace maps 0... to; None without one."""
    if pod.spec.isolation.private_users is None:
        return None
    from stage1.namespace.container import user_namespace_of  # the range `auto` picks is the stage1's

    user_namespace = user_namespace_of(pod)
    return None if user_namespace is None else f"{user_namespace.base}:{user_namespace.size}"


def _known(value: Any) -> Any:
    return None if value in (None, 2**64 - 1) else value  # systemd's "unset" is UINT64_MAX


def stop(systemd: Systemd, pod: Pod) -> None:
    systemd.stop_unit(pod.unit)


def kill(systemd: Systemd, pod: Pod, signal_name: str) -> None:
    number = parse_signal(signal_name)
    if not view(systemd, pod).running:
        raise SdrunError(f"pod '{pod.name}' is not running")
    systemd.kill_unit(pod.unit, number)


def parse_signal(text: str) -> int:
    if text.isdigit() and 0 < int(text) < signal.SIGRTMAX:
        return int(text)
    name = text.upper() if text.upper().startswith("SIG") else f"SIG{text.upper()}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise SdrunError(f"unknown signal '{text}'") from None


def remove(systemd: Systemd, store: PodStore, pod: Pod, *, force: bool) -> None:
    with pod.locked():
        if view(systemd, pod).running:
            if not force:
                raise SdrunError(f"pod '{pod.name}' is running", hint="stop it first, or use 'sdrun rm -f'")
            with contextlib.suppress(NotFound):
                systemd.kill_unit(pod.unit, signal.SIGKILL)
            systemd.stop_unit(pod.unit)
        _discard(systemd, store, pod)


def _discard(systemd: Systemd, store: PodStore, pod: Pod) -> bool:
    """Remove an ended pod and what it left; True if that included its network (a crash's leftover)."""
    systemd.reset_failed_unit(pod.unit)
    Stage1.named(pod.spec.stage1).gc(pod)
    released = release(pod)
    store.remove(pod)
    return released


def gc(systemd: Systemd, store: PodStore) -> list[str]:
    """Remove every pod that has ended, and what crashed runs left half-made. Returns what went."""
    removed = store.remove_leftovers(in_units=_pods_with_units(systemd))
    for pod_view in views(systemd, store.all()):
        if pod_view.running:
            continue
        # A pod whose lock is busy is still being set up by a `run`: leave it alone.
        with contextlib.suppress(SdrunError), pod_view.pod.locked():
            released = _discard(systemd, store, pod_view.pod)
            removed.append(f"{pod_view.pod.name} ({pod_view.pod.uuid})" + (" and its network" if released else ""))
    from sdrun.pods.manage import collect

    app_pods_removed, app_pods = collect(systemd, store.paths)  # pods of several apps (sdrun.pods)
    removed += app_pods_removed
    # What is left is running or busy: its network stays; any other network leftovers go.
    removed += collect_garbage(store.paths.root, set(store.uuids()) | app_pods)
    return removed


# A pod's unit says whose it is in its Description= (properties.pod_service_properties).
UNIT_DESCRIPTION = re.compile(r"^sdrun pod .* \(([0-9a-f-]{36})\)$")


def _pods_with_units(systemd: Systemd) -> set[str]:
    """The UUIDs of the pods systemd has a unit of, running or not, whatever their directories hold."""
    units = systemd.list_units(UNIT_PATTERNS)
    return {match[1] for unit in units if (match := UNIT_DESCRIPTION.match(unit.description))}


def enter(
    systemd: Systemd, pod: Pod, argv: list[str], as_asked: EnterOptions | None = None, *, tty: bool = False
) -> int:
    """Run argv inside a running pod, in its cgroup; return its exit status. as_asked: another
    user, more variables, another directory than the app's (enter -u, -e, -w). The command gets a
    terminal (of the pod's own devpts, with a stage1 that makes one) where ours are, and with tty
    (-t) on stdin and stdout whatever they are: never one of ours, which the pod could keep."""
    from sdrun.terminal import PseudoTerminal, terminal_stdio

    backend = Stage1.named(pod.spec.stage1)
    leader = _leader(systemd, pod)
    changes = as_asked.changes(leader) if as_asked else None
    stdio = terminal_stdio(forced=tty)
    host_terminal = PseudoTerminal(stdio) if stdio and not backend.enter_terminal else None
    channel = _TerminalChannel(stdio) if stdio and backend.enter_terminal else None
    go_read, go_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_write)
        if host_terminal is not None:
            host_terminal.become_child_stdio()
        terminal = channel.theirs() if channel is not None else None
        _enter_child(backend, pod, leader, argv, go_read, changes, terminal)
    os.close(go_read)
    try:
        if channel is not None:
            channel.ours()
        systemd.attach_processes(pod.unit, [child])
        os.write(go_write, b"go")
    finally:
        os.close(go_write)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if host_terminal is not None:
            host_terminal.relay_until_exit(child)
        if channel is not None:
            channel.relay_until_exit(child)
        _, status = os.waitpid(child, 0)
    finally:
        signal.signal(signal.SIGINT, previous)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


class _TerminalChannel:
    """The socket pair on which the enter child sends the master of the terminal it made in the
    pod (stage1.interface.EnterTerminal), as `run -t`'s stage1 does; we relay that master."""

    def __init__(self, stdio: tuple[int, ...]) -> None:
        import socket

        self.stdio = stdio
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._ours, self._theirs = ours.detach(), theirs.detach()

    def theirs(self) -> EnterTerminal:
        """In the child: our end closed, theirs to take along."""
        os.close(self._ours)
        return EnterTerminal(self._theirs, self.stdio)

    def ours(self) -> None:
        """In the parent: their end closed, so that the child's exit ends our wait for the master."""
        os.close(self._theirs)

    def relay_until_exit(self, child: int) -> None:
        from sdrun.terminal import TerminalRelay, output_of, receive_terminal, relay_until_exit

        try:
            master = receive_terminal(self._ours)
        finally:
            os.close(self._ours)
        if master is None:
            return  # the child failed before it made the terminal, and said why on our stderr
        with TerminalRelay(master, output_of(self.stdio)) as relay:
            relay_until_exit(relay, child, copy_input=0 in self.stdio)


class EnterOptions(NamedTuple):
    """enter's -u USER[:GROUP], -e KEY=VALUE and -w DIR."""

    user: str | None = None
    env: dict[str, str] = {}  # noqa: RUF012 - a NamedTuple's default, never changed
    workdir: str | None = None

    def changes(self, leader: int) -> AppChanges:
        """The app's planned fields these change (stage1.process.changed_app); a user's name is
        looked up in the pod's /etc/passwd and /etc/group as they are now, in the leader's root."""
        from pathlib import Path

        from stage1.app import enter_changes

        return enter_changes(Path(f"/proc/{leader}/root"), self.user, self.env, self.workdir)


def _leader(systemd: Systemd, pod: Pod) -> int:
    """The process whose namespaces `enter` joins: a service's MainPID (the app, or its init); in a
    scope, where the stage1 may stay as the app's parent in the host's namespaces (namespace's
    supervisor), the first process in a PID namespace other than ours, else the first one."""
    if not view(systemd, pod).running:
        raise SdrunError(f"pod '{pod.name}' is not running")
    if not pod.spec.scope:
        main_pid = systemd.unit_property(pod.unit, SERVICE, "MainPID")
        if main_pid:
            return int(main_pid)
    processes = systemd.unit_processes(pod.unit)
    if not processes:
        raise SdrunError(f"pod '{pod.name}' has no processes")
    ours = _pid_namespace("self")
    return next((pid for pid in processes if _pid_namespace(str(pid)) not in (ours, None)), processes[0])


def _pid_namespace(process: str) -> tuple[int, int] | None:
    try:
        found = os.stat(f"/proc/{process}/ns/pid")
    except OSError:  # gone meanwhile
        return None
    return found.st_dev, found.st_ino


def _enter_child(
    backend: Stage1,
    pod: Pod,
    leader: int,
    argv: list[str],
    go_read: int,
    changes: AppChanges | None,
    terminal: EnterTerminal | None,
) -> None:
    try:
        if os.read(go_read, 2) != b"go":
            os._exit(125)
        from stage1.process import close_all_but_stdio

        # Nothing of ours may reach the pod: the app sees this process from the moment it joins, and
        # one with CAP_SYS_PTRACE could take the bus connection (root's, on systemd) with pidfd_getfd.
        # The terminal's socket leads to us alone, and the stage1 closes it before its fork.
        close_all_but_stdio(keep=terminal.channel if terminal is not None else None)
        backend.enter(pod, leader, argv, changes, terminal)
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave
        os.write(2, error_line(describe(error)).encode())
        os._exit(125)
