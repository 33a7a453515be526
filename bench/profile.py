"""Where the milliseconds of `sdrun run --rm --stage1 fly ... /bin/true` go, step by step."""

from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict

from bench.core import Bench, BenchError, Section, case, progress
from bench.stats import Summary, format_number

# The client's timeline: (label, from event, to event); consecutive, so they add up to the total.
CLIENT_STEPS = (
    ("interpreter start, `site` (spawn → first line)", "spawn", "enter"),
    ("imports: sdrun.cli, sdrun.run, dbus-next's message layer", "enter", "imported"),
    ("argument parsing, spec, stage1 lookup", "imported", "connect>"),
    ("D-Bus: connect, Hello, AddMatch, Subscribe", "connect>", "connect<"),
    ("pod directory and name link", "connect<", "create<"),
    ("watch the unit, stage1 plan, unit properties", "create<", "call:StartTransientUnit>"),
    ("StartTransientUnit → its reply (the job is queued)", "call:StartTransientUnit>", "call:StartTransientUnit<"),
    ("meanwhile: import python-systemd, open the journal", "call:StartTransientUnit<", "wait_for_job>"),
    ("wait for the start job (JobRemoved)", "wait_for_job>", "wait_for_job<"),
    ("start job done → unit seen inactive", "wait_for_job<", "get:ExecMainCode>"),
    ("exit status, journal sync, last lines", "get:ExecMainCode>", "follow<"),
    ("close the bus, remove the pod", "traced<", "end"),
    ("interpreter exit (last line → reaped)", "end", "reaped"),
)
# systemd's view of the unit, from its monotonic timestamps, against the client's events.
UNIT_STEPS = (
    (
        "StartTransientUnit reply → main process started (for namespace: MAINPID=, the container's init)",
        "call:StartTransientUnit<",
        "ExecMainStartTimestampMonotonic",
    ),
    (
        "main process started → unit active (READY=1; fly: the app's exec)",
        "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    ),
    ("unit active → sdrun sees the job done", "ActiveEnterTimestampMonotonic", "wait_for_job<"),
    ("unit active → /bin/true has exited", "ActiveEnterTimestampMonotonic", "ExecMainExitTimestampMonotonic"),
    (
        "app exit → ExecStopPost done, unit inactive",
        "ExecMainExitTimestampMonotonic",
        "InactiveEnterTimestampMonotonic",
    ),
    ("unit inactive → sdrun sees it", "InactiveEnterTimestampMonotonic", "get:ExecMainCode>"),
)


def traced_run(bench: Bench, output: str, stage1_args: list[str]) -> dict[str, int]:
    """One traced `sdrun run`; its events by name (first occurrence for '>', last for '<'), in ns."""
    root = str(bench.scratch / "sdrun-trace")
    argv = ["--root", root, "run", "--rm", *stage1_args, "--rootfs", str(bench.rootfs), "--", "/bin/true"]
    spawned = time.monotonic_ns()
    finished = subprocess.run(
        [bench.python, "-m", "bench.trace_run", output, str(spawned), *argv],
        cwd=bench.project,
        capture_output=True,
        check=False,
    )
    reaped = time.monotonic_ns()
    if finished.returncode != 0:
        raise BenchError(f"traced run failed: {finished.stderr.decode(errors='replace').strip()[-300:]}")
    with open(output) as stream:
        trace = json.load(stream)
    events: dict[str, int] = {}
    for name, when in trace["events"]:
        if name.endswith("<") or name not in events:
            events[name] = when
    events.update(trace["unit"])
    events["reaped"] = reaped
    return events


def _table(steps: tuple[tuple[str, str, str], ...], runs: list[dict[str, int]]) -> list[tuple[str, ...]]:
    durations: dict[str, list[float]] = defaultdict(list)
    for events in runs:
        for label, start, end in steps:
            if start in events and end in events:
                durations[label].append((events[end] - events[start]) / 1e6)
    rows: list[tuple[str, ...]] = []
    for label, _, _ in steps:
        if durations[label]:
            summary = Summary.of(durations[label])
            rows.append((label, format_number(summary.median), format_number(summary.p90)))
        else:
            rows.append((label, "not traced", ""))
    return rows


# The profiled runs: each stage1 sdrun ships for one-shot containers, with the options of the latency case.
PROFILED = {"sdrun namespace": ["--stage1", "namespace", "--net", "none"], "sdrun fly": ["--stage1", "fly"]}


@case("profile", order=60)
def hot_path(bench: Bench) -> list[Section]:
    sections = []
    for name, stage1_args in PROFILED.items():
        if any(runtime.name == name for runtime in bench.runtimes):
            sections += _profile(bench, name, stage1_args)
    return sections


def _profile(bench: Bench, name: str, stage1_args: list[str]) -> list[Section]:
    count = bench.scale(full=20, quick=5)
    command = f"sdrun run --rm {' '.join(stage1_args)} --rootfs R -- /bin/true"
    progress(f"profile: {count} traced runs of {command}")
    output = str(bench.scratch / "trace.json")
    traced_run(bench, output, stage1_args)  # warm-up
    runs = [traced_run(bench, output, stage1_args) for _ in range(count)]
    totals = [(events["reaped"] - events["spawn"]) / 1e6 for events in runs]
    client = _table(CLIENT_STEPS, runs)
    total = Summary.of(totals)
    client.append(("total (spawn → reaped)", format_number(total.median), format_number(total.p90)))
    headers = ("step", "median [ms]", "p90 [ms]")
    about = (
        f"`{command}` run {count} times by `python -m bench.trace_run`, which runs the CLI in-process with "
        f"monotonic timestamps around its steps; medians per step (they need not add up to the median total "
        f"exactly). Reading the unit's timestamps afterwards is left out."
    )
    unit_about = (
        "The same runs seen from systemd: the unit's monotonic timestamps (ExecMainStart, ActiveEnter = READY=1, "
        "ExecMainExit, InactiveEnter) against the client's. These overlap the client's steps above."
    )
    return [
        Section(f"Profile, {name}: where the milliseconds of a one-shot run go", about, headers, client),
        Section(f"Profile, {name}: the same runs as systemd saw them", unit_about, headers, _table(UNIT_STEPS, runs)),
    ]
