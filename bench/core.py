"""The pieces every benchmark case uses: the case registry, the run context,
timed commands, interleaved rounds and the comparison table.

A case is a function decorated with @case; it gets a Bench and returns the
Sections of the report it contributes. bench/README.md shows one.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.stats import Summary, format_number, format_ratio, ratio

if TYPE_CHECKING:
    from bench.runtimes import Runtime

COMMAND_TIMEOUT = 120.0  # seconds; a container start that takes longer is broken, not slow
IN_SYSTEMDS_MOUNT_NAMESPACE = ("nsenter", "--mount=/proc/1/ns/mnt", "--")


def _own_mount_namespace() -> bool:
    """Whether this process has left the mount namespace of PID 1 (systemd's)."""
    return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")


class BenchError(Exception):
    """A command of a benchmark failed; the message says which and why."""


@dataclass
class Section:
    """One part of docs/benchmarks.md: a heading, how it was measured, a table."""

    title: str
    about: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    # For the chart: label -> samples in milliseconds, drawn as distributions.
    distributions: dict[str, list[float]] = field(default_factory=dict)
    # For the summary at the top: (what, sdrun's figure and its ratios).
    headlines: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    name: str
    order: int  # position in the report
    measure: Callable[[Bench], list[Section]]


CASES: dict[str, Case] = {}


def case(name: str, order: int = 50) -> Callable[[Callable[[Bench], list[Section]]], Callable[[Bench], list[Section]]]:
    """Register a benchmark case under `name`; `python -m bench --only NAME` runs it alone."""

    def register(measure: Callable[[Bench], list[Section]]) -> Callable[[Bench], list[Section]]:
        if name in CASES:
            raise ValueError(f"benchmark case '{name}' is registered twice")
        CASES[name] = Case(name, order, measure)
        return measure

    return register


@dataclass
class Bench:
    """What a case needs: where things are, how long to measure, which runtimes work."""

    project: Path
    rootfs: Path
    scratch: Path  # removed after the run
    quick: bool
    runtimes: list[Runtime]
    notes: list[str] = field(default_factory=list)  # shown under the report's machine facts
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def scale(self, full: int, quick: int) -> int:
        """How many rounds/runs: `full` for a real run, `quick` with --quick."""
        return quick if self.quick else full

    def unique(self, prefix: str = "bench") -> str:
        """A container name nobody else uses in this run (safe across threads: count() is atomic)."""
        return f"{prefix}-{os.getpid()}-{next(self._ids)}"

    @property
    def sdrun(self) -> list[str]:
        """The sdrun command with this run's private state directory, in systemd's mount namespace
        (nsenter costs it ~1 ms) if the benchmark has one of its own (hide_hybrid_unified_cgroup):
        from another, `sdrun run` leaves a pod's network to the unit's ExecStartPre= (sdrun.run)."""
        command = [self.sdrun_executable, "--root", str(self.scratch / "sdrun")]
        return [*IN_SYSTEMDS_MOUNT_NAMESPACE, *command] if _own_mount_namespace() else command

    @property
    def sdrun_executable(self) -> str:
        return str(self.project / ".venv/bin/sdrun")

    @property
    def python(self) -> str:
        return str(self.project / ".venv/bin/python")

    def subjects(self) -> list[Runtime]:
        return [runtime for runtime in self.runtimes if runtime.is_sdrun]

    def peers(self) -> list[Runtime]:
        return [runtime for runtime in self.runtimes if not runtime.is_sdrun]


def progress(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, capture: bool = False) -> str:
    """Run argv to completion; return its stdout if `capture`; BenchError with stderr's last line
    if it fails. stderr goes to a file, not a pipe: a container left running may hold it open.

    The timeout is a timer that kills the command, not Popen.wait(timeout): that polls with sleeps
    growing from 0.5 to 50 ms and would round every timing up to its steps (8 ms, 64 ms, ...)."""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=errors,
            )
        except OSError as error:
            raise BenchError(f"cannot run {argv[0]}: {error.strerror}") from None
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            process.kill()

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            stdout, _ = process.communicate()
        finally:
            watchdog.cancel()
        if expired.is_set():
            raise BenchError(f"{argv[0]} timed out after {timeout:.0f} s")
        if process.returncode != 0:
            errors.seek(0)
            last_line = (errors.read().decode(errors="replace").strip().splitlines() or ["no error output"])[-1]
            raise BenchError(f"{Path(argv[0]).name} exited with {process.returncode}: {last_line}")
    return stdout.decode(errors="replace") if capture else ""


IDLE_SHARE = 0.9  # of the machine's CPU time, over one sample
IDLE_SAMPLE_SECONDS = 0.2
IDLE_WAIT_SECONDS = 5.0


def wait_until_idle() -> None:
    """Return once the CPUs were idle for IDLE_SHARE of a sample (or after IDLE_WAIT_SECONDS), so that
    what the previous runtime left running (podman's cleanup processes, systemd collecting its units,
    journald writing) does not count against the next one's batch."""
    deadline = time.monotonic() + IDLE_WAIT_SECONDS
    while time.monotonic() < deadline:
        before = _cpu_times()
        time.sleep(IDLE_SAMPLE_SECONDS)
        after = _cpu_times()
        busy, idle = (after[0] - before[0]), (after[1] - before[1])
        if busy + idle and idle / (busy + idle) >= IDLE_SHARE:
            return


def _cpu_times() -> tuple[int, int]:
    """Busy and idle (with iowait) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def fixed(argv: Sequence[str]) -> Callable[[], Sequence[str]]:
    """A command maker for a command that is the same every time."""
    return lambda: argv


def timed(argv: Sequence[str]) -> float:
    """Wall-clock seconds from spawning argv to reaping it."""
    start = time.perf_counter()
    run_command(argv)
    return time.perf_counter() - start


def interleaved(
    commands: Mapping[str, Callable[[], Sequence[str]]], rounds: int, warmup: int = 2
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time each command once per round, A B C A B C ..., so that noise hits all alike.
    The order rotates every round, so no command always follows the same one.
    A command that fails is dropped; returns (seconds per name, failure per dropped name)."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    failures: dict[str, str] = {}
    names = list(commands)
    for number in range(warmup + rounds):
        shift = number % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if name in failures:
                continue
            try:
                seconds = timed(commands[name]())
            except BenchError as error:
                failures[name] = str(error)
                continue
            if number >= warmup:
                samples[name].append(seconds)
    return {name: values for name, values in samples.items() if name not in failures}, failures


def comparison(
    values: Mapping[str, Sequence[float]],
    subjects: Sequence[str],
    unit: str,
    failures: Mapping[str, str] | None = None,
    show_p90: bool = True,
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """A table: one row per runtime with median (and p90) of its samples, and for each sdrun
    variant in `subjects` the ratio subject/row of the medians."""
    summaries = {name: Summary.of(samples) for name, samples in values.items() if samples}
    present = [subject for subject in subjects if subject in summaries]
    headers = ("runtime", f"median [{unit}]", *((f"p90 [{unit}]",) if show_p90 else ()), "n")
    headers += tuple(f"{subject} ÷ it" for subject in present)
    rows = []
    for name, summary in summaries.items():
        cells = [name, format_number(summary.median)]
        if show_p90:
            cells.append(format_number(summary.p90))
        cells.append(str(summary.count))
        cells += [format_ratio(ratio(summaries[subject].median, summary.median)) for subject in present]
        rows.append(tuple(cells))
    for name, reason in (failures or {}).items():
        rows.append((name, f"failed: {reason}", *[""] * (len(headers) - 2)))
    return headers, rows


def headline(
    values: Mapping[str, Sequence[float]], subject: str, peers: Sequence[str], unit: str, what: str
) -> list[tuple[str, str]]:
    """'sdrun fly 412 ms: 2.4x podman, 9.1x systemd-nspawn' for the report's summary."""
    if not values.get(subject):
        return []
    mine = Summary.of(values[subject]).median
    parts = [
        f"{format_ratio(ratio(mine, Summary.of(values[peer]).median))} {peer}" for peer in peers if values.get(peer)
    ]
    return [(what, f"{subject} {format_number(mine)} {unit}" + (f" — {', '.join(parts)}" if parts else ""))]


def milliseconds(samples: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    return {name: [value * 1000 for value in values] for name, values in samples.items()}
