"""The properties every pod's unit carries, whatever its stage1, and how each is written.

A pod's unit is described once, as a list of D-Bus properties (name, signature,
value): `sdrun run` hands that list to StartTransientUnit, and `sdrun generate`
writes the very same list as a unit file through UNIT_KEYS, the one table that
knows each property's unit-file section, key and syntax. A property missing
from the table cannot be written to a file: generate fails rather than drop it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.linux.syscalls import RLIMIT_NAMES
from sdrun.net import hook as network_hook
from sdrun.net import on_network
from sdrun.paths import Paths
from sdrun.pod import Pod, unit_name
from sdrun.spec import NO_PIDS_LIMIT
from sdrun.systemd.bus import Property
from sdrun.systemd.unitfile import Command, quote_unexpanded
from stage1.interface import UnitPlan

SLICE = "machine.slice"
USEC = 1_000_000
CPU_PERIOD_USEC = 1_000_000  # CPUQuotaPerSecUSec is CPU time per second of wall time
# systemd 252 writes a transient unit's CPUQuota= in whole percent (and so must a unit file, to agree).
CPU_QUOTA_STEP_USEC = CPU_PERIOD_USEC // 100
MSEC = 1000  # ... and its other durations in whole milliseconds
MIN_STOP_TIMEOUT_USEC = USEC  # TimeoutStopSec= bounds each ExecStopPost= command too: see stop_properties()

# (property, D-Bus signature, value from the pod; None = leave unset)
RESOURCE_TABLE: tuple[tuple[str, str, Callable[[Pod], Any]], ...] = (
    ("MemoryMax", "t", lambda pod: pod.spec.resources.memory),
    ("CPUQuotaPerSecUSec", "t", lambda pod: _cpu_quota(pod.spec.resources.cpus)),
    ("TasksMax", "t", lambda pod: _tasks_max(pod.spec.resources.pids)),
    ("Restart", "s", lambda pod: pod.spec.restart),
)
SERVICE_TABLE: tuple[tuple[str, str, Callable[[Pod], Any]], ...] = (
    ("Requires", "as", lambda pod: _units(pod.spec.service.requires)),
    ("After", "as", lambda pod: _units(pod.spec.service.requires)),
    ("RestartUSec", "t", lambda pod: _usec(pod.spec.service.restart_sec)),
    ("StartLimitIntervalUSec", "t", lambda pod: _usec(pod.spec.service.start_limit_interval)),
    ("StartLimitBurst", "u", lambda pod: pod.spec.service.start_limit_burst),
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
TASKS_MAX_INFINITY = (1 << 64) - 1  # TasksMax=infinity on D-Bus


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
    kill_signal: list[Property] = [] if stop_signal is None else [("KillSignal", "i", int(stop_signal))]
    return [*kill_signal, ("TimeoutStopUSec", "t", max(usec, MIN_STOP_TIMEOUT_USEC))]


def logging_properties(pod: Pod) -> list[Property]:
    return [
        ("StandardOutput", "s", "journal"),
        ("StandardError", "s", "journal"),
        ("SyslogIdentifier", "s", pod.name),
        # The app's output never chooses its priority: a line starting `<0>` stays a line, at the
        # priority of its stream (journald's: stdout info, stderr notice), and reaches no terminal.
        ("SyslogLevelPrefix", "b", False),
        # Every line of the app carries its pod, and its sdrun root for `sdrun logs --all`.
        ("LogExtraFields", "aay", [f"SDRUN_POD={pod.uuid}".encode(), f"SDRUN_ROOT={Paths.root_of(pod.dir)}".encode()]),
        ("LogRateLimitIntervalUSec", "t", 0),
    ]


def _from_table(pod: Pod, table: Sequence[tuple[str, str, Callable[[Pod], Any]]]) -> list[Property]:
    return [(name, signature, value) for name, signature, get in table if (value := get(pod)) is not None]


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
) -> list[Property]:
    """The properties of a pod's service, transient or installed: the stage1's plan, the
    common ones, and the commands to run before the app starts and after it ended.
    record_exit: write the exit record for `sdrun list` once the app has ended.
    network_ready: the caller has set up the pod's network (`sdrun run` of a pod that does not
    restart, sparing the unit the start of a Python process): the unit only tears it down."""
    if on_network(pod.spec):  # the pod's network namespace exists from before the app to after its end
        set_up, tear_down = network_hook.commands(pod.dir, pod.spec.stop_timeout)
        if not network_ready:
            start_pre = [*start_pre, exec_command(set_up)]
        stop_post = [exec_command(tear_down), *stop_post]
    if record_exit:  # first: no tear-down may delay or prevent it
        stop_post = [record_exit_command(pod), *stop_post]
    properties: list[Property] = [
        ("Description", "s", f"sdrun pod {pod.name} ({pod.uuid})"),
        *[prop for prop in service_option_properties(pod) if prop[0] in ("Requires", "After")],
        ("Slice", "s", SLICE),
    ]
    if start_pre:
        properties.append(("ExecStartPre", "a(sasb)", list(start_pre)))
    properties += [
        ("ExecStart", "a(sasb)", [[plan.executable, *start_command(plan.argv)[1:]]]),
    ]
    if stop_post:
        properties.append(("ExecStopPost", "a(sasb)", list(stop_post)))
    properties += [
        # sdrun's commands around the app run as root, unsandboxed, whatever User= the stage1 gives it.
        ("PermissionsStartOnly", "b", True),
        ("Delegate", "b", True),  # lets `sdrun enter` attach its process to the pod's cgroup
        ("CollectMode", "s", _collect_mode(pod)),
        *logging_properties(pod),
        *resource_properties(pod),
        *[prop for prop in service_option_properties(pod) if prop[0] not in ("Requires", "After")],
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
        pod, plan, stop_post=stop_post, record_exit=record_exit, network_ready=network_ready
    )
    if keep_until_released:
        properties.append(("AddRef", "b", True))
    return properties


def scope_properties(pod: Pod, pid: int, backend_properties: Sequence[Property] = ()) -> list[Property]:
    """The properties of a pod's transient scope, which adopts pid: the common ones a scope
    takes, and the stage1's own (Stage1.scope_properties)."""
    return [
        ("Description", "s", f"sdrun pod {pod.name} ({pod.uuid})"),
        ("Slice", "s", SLICE),
        ("PIDs", "au", [pid]),
        ("Delegate", "b", True),  # lets `sdrun enter` attach its process to the pod's cgroup
        *[prop for prop in resource_properties(pod) if prop[0] != "Restart"],
        *backend_properties,
    ]


def property_names(properties: Sequence[Property]) -> list[str]:
    return [name for name, _, _ in properties]


# --- the same properties as unit-file lines ---


class UnitKey(NamedTuple):
    """How one D-Bus property is written in a unit file: its section, its key, and its values
    in unit-file syntax, one line each (sdrun.systemd.unitfile quotes and escapes them)."""

    section: str
    key: str
    values: Callable[[Any], list[Any]]


def _text(value: Any) -> list[Any]:
    return [str(value)]


def _boolean(value: Any) -> list[Any]:
    return ["yes" if value else "no"]


def _duration(usec: Any) -> list[Any]:
    for unit, size in (("s", USEC), ("ms", 1000)):
        if usec % size == 0:
            return [f"{usec // size}{unit}" if usec else "0"]
    return [f"{usec}us"]


def _stop_timeout(usec: Any) -> list[Any]:
    """On D-Bus a zero TimeoutStopUSec kills at once (Docker's --stop-timeout 0); in a unit file
    TimeoutStopSec=0 means no timeout at all. The shortest one a file can say acts alike."""
    return _duration(usec or 1)


def _cpu_percent(usec: Any) -> list[Any]:
    return [f"{round(usec / CPU_QUOTA_STEP_USEC)}%"]


def _signal_name(number: Any) -> list[Any]:
    return [signal.Signals(number).name]


def _commands(flag_prefixes: Callable[[Any], str]) -> Callable[[Any], list[Any]]:
    return lambda commands: [Command(command[0], tuple(command[1]), flag_prefixes(command)) for command in commands]


def _assignments(assignments: Any) -> list[Any]:
    """Environment=: one VAR=VALUE a line, quoted (with C escapes) where it needs it."""
    return [quote_unexpanded(assignment) for assignment in assignments]


MS_REC = 0x4000  # BindPaths= flags: a recursive bind


def _bind_paths(binds: Any) -> list[Any]:
    """BindPaths= lines, `[-]SOURCE:DEST:rbind|norbind`, from a(ssbt) (source, dest, ignore-enoent, flags)."""
    lines = []
    for source, destination, ignore_missing, flags in binds:
        if ":" in source + destination:
            raise SdrunError(f"cannot write bind {source}:{destination} in a unit file: its path has a ':'")
        option = "rbind" if flags & MS_REC else "norbind"
        lines.append(quote_unexpanded(f"{'-' if ignore_missing else ''}{source}:{destination}:{option}"))
    return lines


RLIM_INFINITY = (1 << 64) - 1  # (rlim_t) -1, as systemd's Limit*= properties take it


def _limit(value: Any) -> list[Any]:
    """LimitX=: the limit, or SOFT:HARD for the pair _pair_soft_limits makes; infinity for (rlim_t) -1."""
    values = value if isinstance(value, tuple) else (value,)
    return [":".join("infinity" if limit == RLIM_INFINITY else str(limit) for limit in values)]


def _pair_soft_limits(properties: Sequence[Property]) -> list[Property]:
    """On D-Bus LimitNOFILE= is the hard limit and LimitNOFILESoft= the soft one; a unit file says
    both in one LimitNOFILE=SOFT:HARD. Each soft limit joins its hard one as a (soft, hard) pair."""
    hard = {name for name, _, _ in properties if name in HARD_LIMITS}
    soft = {base: value for name, _, value in properties if (base := name.removesuffix("Soft")) in hard}
    paired: list[Property] = []
    for name, signature, value in properties:
        if name.endswith("Soft") and name.removesuffix("Soft") in hard:
            continue  # written with its hard limit
        if name in soft:
            paired.append((name, "(tt)", (soft[name], value)))
        else:
            paired.append((name, signature, value))
    return paired


HARD_LIMITS = frozenset(f"Limit{name.upper()}" for name in RLIMIT_NAMES)


def _ignore_failure_prefix(command: Any) -> str:
    return "-" if command[2] else ""


UNIT = "Unit"
SERVICE = "Service"
UNIT_KEYS: dict[str, UnitKey] = {
    "Description": UnitKey(UNIT, "Description", _text),
    "Requires": UnitKey(UNIT, "Requires", lambda units: [" ".join(units)]),
    "After": UnitKey(UNIT, "After", lambda units: [" ".join(units)]),
    "Wants": UnitKey(UNIT, "Wants", lambda units: [" ".join(units)]),
    "Requisite": UnitKey(UNIT, "Requisite", lambda units: [" ".join(units)]),
    "StartLimitIntervalUSec": UnitKey(UNIT, "StartLimitIntervalSec", _duration),
    "StartLimitBurst": UnitKey(UNIT, "StartLimitBurst", _text),
    "CollectMode": UnitKey(UNIT, "CollectMode", _text),
    "Type": UnitKey(SERVICE, "Type", _text),
    "NotifyAccess": UnitKey(SERVICE, "NotifyAccess", _text),
    "Slice": UnitKey(SERVICE, "Slice", _text),
    "ExecStartPre": UnitKey(SERVICE, "ExecStartPre", _commands(_ignore_failure_prefix)),
    "ExecStart": UnitKey(SERVICE, "ExecStart", _commands(_ignore_failure_prefix)),
    "ExecStartPost": UnitKey(SERVICE, "ExecStartPost", _commands(_ignore_failure_prefix)),
    "ExecStopPost": UnitKey(SERVICE, "ExecStopPost", _commands(_ignore_failure_prefix)),
    "PermissionsStartOnly": UnitKey(SERVICE, "PermissionsStartOnly", _boolean),
    "Delegate": UnitKey(SERVICE, "Delegate", _boolean),
    "StandardOutput": UnitKey(SERVICE, "StandardOutput", _text),
    "StandardError": UnitKey(SERVICE, "StandardError", _text),
    "SyslogIdentifier": UnitKey(SERVICE, "SyslogIdentifier", _text),
    "SyslogLevelPrefix": UnitKey(SERVICE, "SyslogLevelPrefix", _boolean),
    "LogExtraFields": UnitKey(SERVICE, "LogExtraFields", lambda fields: [field.decode() for field in fields]),
    "LogRateLimitIntervalUSec": UnitKey(SERVICE, "LogRateLimitIntervalSec", _duration),
    "MemoryMax": UnitKey(SERVICE, "MemoryMax", _text),
    "CPUQuotaPerSecUSec": UnitKey(SERVICE, "CPUQuota", _cpu_percent),
    "TasksMax": UnitKey(SERVICE, "TasksMax", lambda tasks: ["infinity" if tasks == TASKS_MAX_INFINITY else str(tasks)]),
    "Restart": UnitKey(SERVICE, "Restart", _text),
    "RestartUSec": UnitKey(SERVICE, "RestartSec", _duration),
    "KillSignal": UnitKey(SERVICE, "KillSignal", _signal_name),
    "TimeoutStopUSec": UnitKey(SERVICE, "TimeoutStopSec", _stop_timeout),
    "DevicePolicy": UnitKey(SERVICE, "DevicePolicy", _text),
    "DeviceAllow": UnitKey(SERVICE, "DeviceAllow", lambda devices: [f"{path} {access}" for path, access in devices]),
    "SELinuxContext": UnitKey(SERVICE, "SELinuxContext", _text),
    "AppArmorProfile": UnitKey(SERVICE, "AppArmorProfile", lambda pair: [("-" if pair[0] else "") + pair[1]]),
    "RootDirectory": UnitKey(SERVICE, "RootDirectory", _text),
    "RootDirectoryStartOnly": UnitKey(SERVICE, "RootDirectoryStartOnly", _boolean),
    "MountAPIVFS": UnitKey(SERVICE, "MountAPIVFS", _boolean),
    "BindPaths": UnitKey(SERVICE, "BindPaths", _bind_paths),
    "User": UnitKey(SERVICE, "User", _text),
    "Group": UnitKey(SERVICE, "Group", _text),
    "SupplementaryGroups": UnitKey(SERVICE, "SupplementaryGroups", lambda groups: [" ".join(groups)]),
    "WorkingDirectory": UnitKey(SERVICE, "WorkingDirectory", _text),
    "Environment": UnitKey(SERVICE, "Environment", _assignments),
    "UnsetEnvironment": UnitKey(SERVICE, "UnsetEnvironment", lambda names: [" ".join(names)]),
    "IgnoreSIGPIPE": UnitKey(SERVICE, "IgnoreSIGPIPE", _boolean),
    **{name: UnitKey(SERVICE, name, _limit) for name in HARD_LIMITS},
}


def unit_file_entries(properties: Sequence[Property]) -> list[tuple[str, str, str | Command]]:
    """(section, key, value) for each property, in order."""
    entries: list[tuple[str, str, str | Command]] = []
    for name, signature, value in _pair_soft_limits(properties):
        unit_key = UNIT_KEYS.get(name)
        if unit_key is None:
            raise SdrunError(f"property {name} ({signature}) has no unit-file form", hint="add it to UNIT_KEYS")
        entries += [(unit_key.section, unit_key.key, line) for line in unit_key.values(value)]
    return entries
