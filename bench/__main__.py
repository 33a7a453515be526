"""`python -m bench`: run the benchmark cases and write docs/benchmarks.md (see bench/README.md)."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench
from bench.core import CASES, Bench, BenchError, Section, progress, run_command
from bench.report import RunInfo, draw_chart, kept_notes, python_version, render
from bench.runtimes import (
    available,
    hide_hybrid_unified_cgroup,
    in_throwaway_systemd,
    make_bundles,
    private_podman_storage,
    version_of,
)

PROJECT = Path(__file__).resolve().parents[1]
CHART = "benchmarks-latency.png"


def load_cases() -> None:
    """Import every module of the bench package: a module defines cases by decorating them with @case."""
    for module in pkgutil.iter_modules(bench.__path__):
        if module.name != "__main__":
            importlib.import_module(f"bench.{module.name}")


def machine_facts() -> list[tuple[str, str]]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    systemd = run_command(["systemctl", "--version"], capture=True).splitlines()[0]
    where = "throwaway systemd of the test harness (PID 1 of its own namespaces)" if in_throwaway_systemd() else "host"
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", f"{memory_kib / 1024 / 1024:.1f} GiB"),
        ("kernel", os.uname().release),
        ("distribution", f"Debian {Path('/etc/debian_version').read_text().strip()}"),
        ("systemd", f"{systemd} ({where})"),
        ("Python", python_version()),
        ("load average at start", load),
    ]


def smoke_test(context: Bench) -> dict[str, str]:
    """Run each runtime once; a runtime that cannot run the rootfs here is left out, with its reason."""
    broken = {}
    for runtime in list(context.runtimes):
        try:
            run_command(runtime.oneshot(context, context.unique()))
        except BenchError as error:
            broken[runtime.name] = str(error)
            context.runtimes.remove(runtime)
    return broken


def run_cases(context: Bench, names: list[str]) -> list[Section]:
    sections: list[Section] = []
    for benchmark in sorted(CASES.values(), key=lambda item: item.order):
        if names and benchmark.name not in names:
            continue
        started = time.monotonic()
        try:
            sections += benchmark.measure(context)
        except BenchError as error:
            progress(f"{benchmark.name} failed: {error}")
            sections.append(Section(benchmark.name, f"Failed: {error}", (), []))
        progress(f"{benchmark.name} took {time.monotonic() - started:.0f} s")
    return sections


def main() -> int:
    load_cases()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few rounds: checks that everything runs, in minutes")
    parser.add_argument("--only", action="append", default=[], choices=sorted(CASES), help="run only this case")
    parser.add_argument("--output", type=Path, default=PROJECT / "docs/benchmarks.md", help="the Markdown report")
    args = parser.parse_args()
    if os.geteuid() != 0 or not Path("/run/systemd/system").is_dir():
        print("bench: needs root and a running systemd: run it with 'make bench'", file=sys.stderr)
        return 1
    rootfs = PROJECT / "build/rootfs"
    if not (rootfs / "bin/busybox").exists():
        print(f"bench: no busybox rootfs at {rootfs}: 'make setup' builds it", file=sys.stderr)
        return 1

    started = time.monotonic()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notes = [note for note in [hide_hybrid_unified_cgroup()] if note]
    runtimes, missing = available()
    scratch = Path(tempfile.mkdtemp(prefix="sdrun-bench-", dir="/var/tmp"))
    if any(runtime.executable == "podman" for runtime in runtimes):
        notes.append(private_podman_storage(scratch))
    context = Bench(PROJECT, rootfs, scratch, args.quick, runtimes, notes)
    try:
        if any(runtime.executable == "crun" for runtime in runtimes):
            make_bundles(context)
        broken = smoke_test(context)
        notes += [f"left out {name}: {reason}" for name, reason in {**missing, **broken}.items()]
        machine = machine_facts()
        versions = [(runtime.name, version_of(runtime, PROJECT)) for runtime in context.runtimes]
        sections = run_cases(context, args.only)
    finally:
        run_command([*context.sdrun, "gc"], timeout=600)
        shutil.rmtree(scratch, ignore_errors=True)

    output: Path = args.output
    chart = output.parent / CHART
    drawn = draw_chart(sections, chart)
    info = RunInfo(date, time.monotonic() - started, args.quick, machine, versions, notes)
    output.write_text(render(info, sections, CHART if drawn else None, kept_notes(output)))
    progress(f"wrote {output}" + (f" and {chart}" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
