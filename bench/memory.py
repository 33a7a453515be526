"""Resident memory per running container that the runtime adds beyond the app itself."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.core import Bench, BenchError, Section, case, progress, run_command
from bench.runtimes import SLEEP_ARGV, Runtime
from bench.stats import format_number, format_ratio, ratio

CONTAINERS = 10
SETTLE_SECONDS = 1.0  # let set-up helpers that do not stay (podman's, say) exit first
MIB = 1024 * 1024

ProcessKey = tuple[int, int]  # (pid, start time): a pid alone may be reused


@dataclass(frozen=True)
class Process:
    pid: int
    name: str
    argv: tuple[str, ...]
    rss: int  # bytes
    pss: int  # bytes: shared pages split among their users


def _key(pid: int) -> ProcessKey | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return pid, int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the comm


def _process_keys() -> set[ProcessKey]:
    keys = (_key(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return {key for key in keys if key is not None}


def _kib_field(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _process(pid: int) -> Process | None:
    """A user-space process's memory; None for kernel threads and processes gone meanwhile."""
    try:
        argv = tuple(
            arg.decode(errors="replace") for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        )
        if not argv:
            return None
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        rss = _kib_field(Path(f"/proc/{pid}/status"), "VmRSS")
        pss = _kib_field(Path(f"/proc/{pid}/smaps_rollup"), "Pss")
    except (OSError, ValueError):
        return None
    return Process(pid, name, argv, rss, pss)


def _new_processes(before: set[ProcessKey]) -> list[Process]:
    found = (_process(pid) for pid, _ in _process_keys() - before)
    return [process for process in found if process is not None]


def _is_app(process: Process) -> bool:
    return process.argv == SLEEP_ARGV or process.argv == ("sleep", *SLEEP_ARGV[1:])


def _wait_for_apps(before: set[ProcessKey], count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(map(_is_app, _new_processes(before))) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"fewer than {count} containers came up within {timeout:.0f} s")
        time.sleep(0.1)


@dataclass(frozen=True)
class Footprint:
    helpers: list[Process]
    pid1_growth: int  # bytes

    def per_container(self, value: int) -> float:
        return value / CONTAINERS / MIB


def _footprint(bench: Bench, runtime: Runtime) -> Footprint:
    before = _process_keys()
    pid1_before = _kib_field(Path("/proc/1/status"), "VmRSS")
    names = [bench.unique("mem") for _ in range(CONTAINERS)]
    keepers: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            argv = runtime.detached(bench, name)
            if runtime.foreground:
                keepers.append(
                    subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            else:
                run_command(argv)
        _wait_for_apps(before, CONTAINERS)
        time.sleep(SETTLE_SECONDS)
        pid1_growth = _kib_field(Path("/proc/1/status"), "VmRSS") - pid1_before
        helpers = [process for process in _new_processes(before) if not _is_app(process)]
        return Footprint(helpers, pid1_growth)
    finally:
        for name in names:
            for argv in runtime.remove(bench, name):
                with contextlib.suppress(BenchError):
                    run_command(argv)
        _stop_keepers(keepers)


def _stop_keepers(keepers: list[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """SIGTERM (nspawn then stops its container), SIGKILL after a grace period (bwrap ignores
    SIGTERM; --die-with-parent takes its sandbox along)."""
    for keeper in keepers:
        keeper.terminate()
    deadline = time.monotonic() + grace
    for keeper in keepers:
        try:
            keeper.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()


@case("memory", order=30)
def resident_memory(bench: Bench) -> list[Section]:
    footprints: dict[str, Footprint] = {}
    failures: dict[str, str] = {}
    for runtime in bench.runtimes:
        started = time.monotonic()
        try:
            footprints[runtime.name] = _footprint(bench, runtime)
        except BenchError as error:
            failures[runtime.name] = str(error)
        progress(f"memory: {CONTAINERS} running containers of {runtime.name}, {time.monotonic() - started:.0f} s")
    subjects = [runtime.name for runtime in bench.subjects() if runtime.name in footprints]
    headers = (
        "runtime",
        "RSS per container [MiB]",
        "PSS per container [MiB]",
        "processes it leaves per container",
        "systemd (PID 1) growth per container [MiB]",
        *(f"{subject} ÷ it (RSS)" for subject in subjects),
    )
    rss = {name: sum(process.rss for process in footprint.helpers) for name, footprint in footprints.items()}
    rows = []
    for name, footprint in footprints.items():
        counts = Counter(process.name for process in footprint.helpers)
        kept = ", ".join(f"{process} x{count / CONTAINERS:g}" for process, count in counts.most_common()) or "none"
        rows.append(
            (
                name,
                format_number(footprint.per_container(rss[name])),
                format_number(footprint.per_container(sum(process.pss for process in footprint.helpers))),
                kept,
                format_number(footprint.per_container(footprint.pid1_growth)),
                *(format_ratio(ratio(rss[subject], rss[name])) for subject in subjects),
            )
        )
    rows += [(name, f"failed: {reason}", "", "", "", *[""] * len(subjects)) for name, reason in failures.items()]
    about = (
        f"{CONTAINERS} containers running `{' '.join(SLEEP_ARGV)}` per runtime, started detached (nspawn and bwrap "
        f"stay in the foreground: their own process keeps the container). Every process that appeared meanwhile, "
        f"the apps excepted, is the runtime's: its resident set (RSS) and proportional set (PSS, shared pages "
        f"split) summed and divided by {CONTAINERS}, {SETTLE_SECONDS:g} s after the last app came up. The growth "
        f"of systemd's own RSS is shown apart: every runtime here but bwrap makes it track a unit or scope."
    )
    headlines = [
        (
            f"resident runtime memory per container, {subject}",
            f"{format_number(footprints[subject].per_container(rss[subject]))} MiB"
            + "".join(
                f"; {peer} {format_number(footprints[peer].per_container(rss[peer]))} MiB"
                for peer in ("podman", "systemd-nspawn")
                if peer in footprints
            ),
        )
        for subject in subjects
    ]
    return [Section("Resident memory per running container", about, headers, rows, headlines=headlines)]
