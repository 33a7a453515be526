"""The properties every pod's unit carries, whatever its stage1.

A pod's unit is described once, as a list of D-Bus properties (name, signature,
value) made by propertytable.prop: `sdrun run` hands that list to
StartTransientUnit, and `sdrun generate` writes the very same list as a unit
file through propertytable.PROPERTIES, the one table that knows each property's
signature and its unit-file section, key and syntax.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdrun.net import hook as network_hook
from sdrun.net import on_network
from sdrun.paths import Paths
from sdrun.pod import Pod, unit_name
from sdrun.spec import NO_PIDS_LIMIT
from sdrun.systemd.bus import Property
from sdrun.systemd.propertytable import CPU_PERIOD_USEC, CPU_QUOTA_STEP_USEC, MSEC, TASKS_MAX_INFINITY, USEC, prop
from stage1.interface import UnitPlan

SLICE = "machine.slice"
MIN_STOP_TIMEOUT_USEC = USEC  # TimeoutStopSec= bounds each ExecStopPost= command too: see stop_properties()

# (property, value from the pod; None = leave unset)
RESOURCE_TABLE: tuple[tuple[str, Callable[[Pod], Any]], ...] = (
    ("MemoryMax", lambda pod: pod.spec.resources.memory),
    ("CPUQuotaPerSecUSec", lambda pod: _cpu_quota(pod.spec.resources.cpus)),
    ("TasksMax", lambda pod: _tasks_max(pod.spec.resources.pids)),
    ("Restart", lambda pod: pod.spec.restart),
)
SERVICE_TABLE: tuple[tuple[str, Callable[[Pod], Any]], ...] = (
    ("Requires", lambda pod: _units(pod.spec.service.requires)),
    ("After", lambda pod: _units(pod.spec.service.requires)),
    ("RestartUSec", lambda pod: _usec(pod.spec.service.restart_sec)),
    ("StartLimitIntervalUSec", lambda pod: _usec(pod.spec.service.start_limit_interval)),
    ("StartLimitBurst", lambda pod: pod.spec.service.start_limit_burst),
)

# Records how the app ended in the pod directory (sdrun/record-exit.sh: why a script), so `sdrun
# list` can tell after systemd has garbage-collected the unit; first of the unit's ExecStopPost=,
# its failure ignored ("-"): the tear-down after it runs all the same.
RECORD_EXIT = Path(__file__).resolve().parents[1] / "record-exit.sh"


def escape_variables(argument: str) -> str:
    """systemd expands $VAR in ExecStart= arguments (252 has no way to turn it off); $$ is a literal $."""
    return argument.replace("$", "$$")


def _cpu_quota(cpus: float | None) -> int | None:
    # Rounded to what the transient unit's file can say, so that it stays across a daemon-reload.
    return None if cpus is None else round(cpus * CPU_PERIOD_USEC / CPU_QUOTA_STEP_USEC) * CPU_QUOTA_STEP_USEC


DEFAULT_PIDS_LIMIT = 2048  # podman's default: systemd's own DefaultTasksMax= is a share of the host's pid_max


def _tasks_max(pids: int | None) -> int:
    if pids is None:
        return DEFAULT_PIDS_LIMIT
    return TASKS_MAX_INFINITY if pids == NO_PIDS_LIMIT else pids


def _usec(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * USEC / MSEC) * MSEC


def _collect_mode(pod: Pod) -> str:
    """A pod's unit goes once it has ended; the exit record keeps how. But systemd gives up
    restarting a crash-looping app (5 starts in 10 s by default) without running ExecStopPost=,
    so the record still tells of the last run: a restarting pod's unit stays while it is failed,
    its Result (start-limit-hit) for `list` and `systemctl status`, until `rm`, `gc` or reset-failed."""
    return "inactive-or-failed" if pod.spec.restart == "no" else "inactive"


def _units(names: Sequence[str]) -> list[str] | None:
    return [unit_name(name, "service") for name in names] or None


def exec_command(argv: Sequence[str], *, ignore_failure: bool = False) -> list[Any]:
    """One a(sasb) command (ExecStart=, ExecStartPre=, ExecStopPost=...), its arguments escaped
    for systemd. sdrun's own commands before and after the app run privileged, as root whatever
    the app's User=: PermissionsStartOnly= (see pod_service_properties), not the "+" of the
    ExecStartPreEx= kind of property, which systemd 252 cannot read back at a daemon-reload."""
    return [argv[0], [escape_variables(arg) for arg in argv], ignore_failure]


def start_command(argv: Sequence[str]) -> list[Any]:
    """The a(sasb) command of ExecStart=."""
    return exec_command(argv)


def stop_properties(stop_timeout: float, stop_signal: int | None) -> list[Property]:
    """KillSignal= and TimeoutStopUSec= for a pod's --stop-timeout and stop signal (None: systemd's).
    systemd gives each ExecStopPost= command (the exit record, the network's tear-down, a
    detached --rm's removal) the app's TimeoutStopSec= too, and kills it after: a zero one
    would kill them as they start. So the timeout is never under a second, and a stop timeout
    of 0 (Docker's: no grace at all) is SIGKILL as the stop signal instead; one under a second
    acts as a second (Docker's are whole seconds). In whole milliseconds, as systemd 252 writes it
    to a transient unit's file and reads it back at a daemon-reload."""
    usec = round(stop_timeout * USEC / MSEC) * MSEC
    if usec == 0:
        stop_signal = signal.SIGKILL
    kill_signal: list[Property] = [] if stop_signal is None else [prop("KillSignal", int(stop_signal))]
    return [*kill_signal, prop("TimeoutStopUSec", max(usec, MIN_STOP_TIMEOUT_USEC))]


def logging_properties(pod: Pod) -> list[Property]:
    return [
        prop("StandardOutput", "journal"),
        prop("StandardError", "journal"),
        prop("SyslogIdentifier", pod.name),
        # The app's output never chooses its priority: a line starting `<0>` stays a line, at the
        # priority of its stream (journald's: stdout info, stderr notice), and reaches no terminal.
        prop("SyslogLevelPrefix", False),
        # Every line of the app carries its pod, and its sdrun root for `sdrun logs --all`.
        prop("LogExtraFields", [f"SDRUN_POD={pod.uuid}".encode(), f"SDRUN_ROOT={Paths.root_of(pod.dir)}".encode()]),
        prop("LogRateLimitIntervalUSec", 0),
    ]


def _from_table(pod: Pod, table: Sequence[tuple[str, Callable[[Pod], Any]]]) -> list[Property]:
    return [prop(name, value) for name, get in table if (value := get(pod)) is not None]


def resource_properties(pod: Pod) -> list[Property]:
    return _from_table(pod, RESOURCE_TABLE)


def service_option_properties(pod: Pod) -> list[Property]:
    return _from_table(pod, SERVICE_TABLE)


def record_exit_command(pod: Pod) -> list[Any]:
    return exec_command(["/bin/sh", str(RECORD_EXIT), str(Paths.exit_record(pod.dir))], ignore_failure=True)


def pod_service_properties(
    pod: Pod,
    plan: UnitPlan,
    *,
    start_pre: Sequence[list[Any]] = (),
    stop_post: Sequence[list[Any]] = (),
    record_exit: bool = True,
    network_ready: bool = False,
    slice_unit: str = SLICE,
) -> list[Property]:
    """The properties of a pod's service, transient or installed: the stage1's plan, the
    common ones, and the commands to run before the app starts and after it ended.
    record_exit: write the exit record for `sdrun list` once the app has ended.
    network_ready: the caller has set up the pod's network (`sdrun run` of a pod that does not
    restart, sparing the unit the start of a Python process): the unit only tears it down.
    slice_unit: an app of a pod of several apps runs in its pod's slice (sdrun.pods)."""
    if on_network(pod.spec):  # the pod's network namespace exists from before the app to after its end
        set_up, tear_down = network_hook.commands(pod.dir, pod.spec.stop_timeout)
        if not network_ready:
            start_pre = [*start_pre, exec_command(set_up)]
        stop_post = [exec_command(tear_down), *stop_post]
    if record_exit:  # first: no tear-down may delay or prevent it
        stop_post = [record_exit_command(pod), *stop_post]
    properties: list[Property] = [
        prop("Description", f"sdrun pod {pod.name} ({pod.uuid})"),
        *[option for option in service_option_properties(pod) if option[0] in ("Requires", "After")],
        prop("Slice", slice_unit),
    ]
    if start_pre:
        properties.append(prop("ExecStartPre", list(start_pre)))
    properties += [
        prop("ExecStart", [[plan.executable, *start_command(plan.argv)[1:]]]),
    ]
    if stop_post:
        properties.append(prop("ExecStopPost", list(stop_post)))
    properties += [
        # sdrun's commands around the app run as root, unsandboxed, whatever User= the stage1 gives it.
        prop("PermissionsStartOnly", True),
        prop("Delegate", True),  # lets `sdrun enter` attach its process to the pod's cgroup
        prop("CollectMode", _collect_mode(pod)),
        *logging_properties(pod),
        *resource_properties(pod),
        *[option for option in service_option_properties(pod) if option[0] not in ("Requires", "After")],
        *plan.properties,
    ]
    return properties


def service_properties(
    pod: Pod,
    plan: UnitPlan,
    *,
    keep_until_released: bool,
    remove_when_done: Sequence[Path] = (),
    record_exit: bool = True,
    network_ready: bool = False,
    slice_unit: str = SLICE,
) -> list[Property]:
    """All properties of the pod's transient service. keep_until_released adds a reference
    (AddRef=) that stops systemd from collecting the unit before we read its exit status;
    remove_when_done lists paths to delete once the app has ended (detached --rm);
    record_exit=False leaves out the exit record, for a pod removed by the caller itself;
    network_ready: see pod_service_properties()."""
    stop_post = []
    if remove_when_done:
        stop_post.append(exec_command(["/bin/rm", "-rf", "--", *map(str, remove_when_done)]))
    properties = pod_service_properties(
        pod, plan, stop_post=stop_post, record_exit=record_exit, network_ready=network_ready, slice_unit=slice_unit
    )
    if keep_until_released:
        properties.append(prop("AddRef", True))
    return properties


def scope_properties(pod: Pod, pid: int, backend_properties: Sequence[Property] = ()) -> list[Property]:
    """The properties of a pod's transient scope, which adopts pid: the common ones a scope
    takes, and the stage1's own (Stage1.scope_properties)."""
    return [
        prop("Description", f"sdrun pod {pod.name} ({pod.uuid})"),
        prop("Slice", SLICE),
        prop("PIDs", [pid]),
        prop("Delegate", True),  # lets `sdrun enter` attach its process to the pod's cgroup
        *[resource for resource in resource_properties(pod) if resource[0] != "Restart"],
        *backend_properties,
    ]
