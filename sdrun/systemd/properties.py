"""The properties every pod's unit carries, whatever its stage1, from one table.

Each entry maps a spec value to one systemd unit property; a value of None
leaves the property unset so systemd's default applies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdrun.paths import Paths
from sdrun.pod import Pod
from sdrun.systemd.bus import Property
from stage1 import UnitPlan

SLICE = "machine.slice"
CPU_PERIOD_USEC = 1_000_000  # CPUQuotaPerSecUSec is CPU time per second of wall time

# (property, D-Bus signature, value from the pod; None = leave unset)
RESOURCE_TABLE: tuple[tuple[str, str, Callable[[Pod], Any]], ...] = (
    ("MemoryMax", "t", lambda pod: pod.spec.resources.memory),
    ("CPUQuotaPerSecUSec", "t", lambda pod: _cpu_quota(pod.spec.resources.cpus)),
    ("TasksMax", "t", lambda pod: pod.spec.resources.pids),
    ("Restart", "s", lambda pod: pod.spec.restart),
)

# Records how the app ended in the pod directory, so `sdrun list` can tell
# after systemd has garbage-collected the unit. It runs privileged ("+") so
# that neither the app's User= nor fly's RootDirectory= applies to it.
RECORD_EXIT = 'echo "$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS" > "$1.tmp" && mv -f "$1.tmp" "$1"'


def escape_variables(argument: str) -> str:
    """systemd expands $VAR in ExecStart= arguments (252 has no way to turn it off); $$ is a literal $."""
    return argument.replace("$", "$$")


def _cpu_quota(cpus: float | None) -> int | None:
    return None if cpus is None else round(cpus * CPU_PERIOD_USEC)


def logging_properties(pod: Pod) -> list[Property]:
    return [
        ("StandardOutput", "s", "journal"),
        ("StandardError", "s", "journal"),
        ("SyslogIdentifier", "s", pod.name),
        ("LogExtraFields", "aay", [f"SDRUN_POD={pod.uuid}".encode()]),
        ("LogRateLimitIntervalUSec", "t", 0),
    ]


def resource_properties(pod: Pod) -> list[Property]:
    return [(name, signature, value) for name, signature, get in RESOURCE_TABLE if (value := get(pod)) is not None]


def service_properties(
    pod: Pod, plan: UnitPlan, *, keep_until_released: bool, remove_when_done: Sequence[Path] = ()
) -> list[Property]:
    """All properties of the pod's transient service. keep_until_released adds a reference
    (AddRef=) that stops systemd from collecting the unit before we read its exit status;
    remove_when_done lists paths to delete once the app has ended (detached --rm)."""
    stop_post = [["/bin/sh", ["/bin/sh", "-c", RECORD_EXIT, "sh", str(Paths.exit_record(pod.dir))], ["privileged"]]]
    if remove_when_done:
        stop_post.append(["/bin/rm", ["/bin/rm", "-rf", "--", *map(str, remove_when_done)], ["privileged"]])
    properties: list[Property] = [
        ("Description", "s", f"sdrun pod {pod.name} ({pod.uuid})"),
        ("Slice", "s", SLICE),
        ("ExecStart", "a(sasb)", [[plan.executable, [escape_variables(arg) for arg in plan.argv], False]]),
        ("Delegate", "b", True),  # lets `sdrun enter` attach its process to the pod's cgroup
        ("ExecStopPostEx", "a(sasas)", stop_post),
        ("CollectMode", "s", "inactive-or-failed"),
        *logging_properties(pod),
        *resource_properties(pod),
        *plan.properties,
    ]
    if keep_until_released:
        properties.append(("AddRef", "b", True))
    return properties


def scope_properties(pod: Pod, pid: int) -> list[Property]:
    return [
        ("Description", "s", f"sdrun pod {pod.name} ({pod.uuid})"),
        ("Slice", "s", SLICE),
        ("PIDs", "au", [pid]),
        *[prop for prop in resource_properties(pod) if prop[0] != "Restart"],
    ]


def property_names(properties: Sequence[Property]) -> list[str]:
    return [name for name, _, _ in properties]
