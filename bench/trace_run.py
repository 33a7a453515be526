"""`python -m bench.trace_run OUT SPAWN_NS SDRUN_ARGS...`: run the sdrun CLI in this process with
timestamps around each step of the hot path, and write them to OUT as JSON.

Used by the profile case. It wraps functions of sdrun by name and only if they
exist, so a renamed step shows up as missing rather than breaking the run. The
unit's own timestamps (stage1 forked, READY=1, app exit, inactive) come from
systemd after the run, while its AddRef still keeps the unit loaded.
"""

import time

ENTERED = time.monotonic_ns()

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

Event = tuple[str, int]
UNIT_TIMESTAMPS = {
    "org.freedesktop.systemd1.Unit": ("ActiveEnterTimestampMonotonic", "InactiveEnterTimestampMonotonic"),
    "org.freedesktop.systemd1.Service": ("ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic"),
}


def _wrap(owner: Any, name: str, events: list[Event], label: Callable[..., str] | None = None) -> None:
    original = getattr(owner, name, None)
    if original is None:
        return

    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        what = label(*args) if label else name
        events.append((f"{what}>", time.monotonic_ns()))
        try:
            return original(*args, **kwargs)
        finally:
            events.append((f"{what}<", time.monotonic_ns()))

    setattr(owner, name, traced)


def main() -> None:
    out, spawned, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    events: list[Event] = [("spawn", spawned), ("enter", ENTERED)]
    unit_times: dict[str, int] = {}

    import sdrun.cli
    from sdrun import run as running
    from sdrun.cli import runcommand  # noqa: F401 - the fast path of `run` imports it first
    from sdrun.pod import PodStore
    from sdrun.systemd import bus

    events.append(("imported", time.monotonic_ns()))
    for name in ("connect", "start_transient_unit", "wait_for_job", "close"):
        _wrap(bus.Systemd, name, events)
    _wrap(bus.Systemd, "call", events, label=lambda self, member, *rest: f"call:{member}")
    _wrap(bus.Systemd, "unit_property", events, label=lambda self, unit, interface, name: f"get:{name}")
    _wrap(PodStore, "create", events)
    _wrap(PodStore, "remove", events)

    follow = running._follow_in_foreground

    def follow_then_read_unit(systemd: Any, pod: Any, *rest: Any, **keywords: Any) -> int:
        status: int = follow(systemd, pod, *rest, **keywords)
        events.append(("follow<", time.monotonic_ns()))
        path = bus.unit_object_path(pod.unit)
        for interface, names in UNIT_TIMESTAMPS.items():
            for property_name in names:
                (value,) = bus.Systemd.call(
                    systemd, "Get", "ss", [interface, property_name], path=path, interface=bus.PROPERTIES
                )
                unit_times[property_name] = value.value * 1000  # µs -> ns, CLOCK_MONOTONIC like ours
        events.append(("traced<", time.monotonic_ns()))
        return status

    running._follow_in_foreground = follow_then_read_unit
    code = sdrun.cli.run_command_line(args)
    events.append(("end", time.monotonic_ns()))
    with open(out, "w") as stream:
        json.dump({"events": events, "unit": unit_times, "exit_status": code}, stream)
    # Leave as sdrun's entry_point does (os._exit once output is flushed), so that the profile's
    # "interpreter exit" step is the command's own.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main()
