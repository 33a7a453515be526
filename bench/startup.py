"""CLI start-up: what importing sdrun costs, and `--help` wall time against the peers' CLIs."""

from __future__ import annotations

import subprocess
from collections import defaultdict

from bench.core import (
    Bench,
    BenchError,
    Section,
    case,
    comparison,
    fixed,
    headline,
    interleaved,
    milliseconds,
    progress,
)
from bench.stats import Summary, format_number

# What `sdrun run` imports on every start (a plain one is read without click: sdrun.cli.runcommand),
# and what the stage1 entries import inside the unit.
IMPORTS = {
    "sdrun run (sdrun.cli.runcommand, sdrun.run)": "sdrun.cli.runcommand, sdrun.run",
    "namespace stage1 entry (in the unit)": "stage1.namespace.entry",
    "fly stage1 entry (in the unit, image pods)": "stage1.fly.entry",
}
HELP_PEERS = ("podman", "crun", "runc", "systemd-run", "systemd-nspawn", "bwrap")


def import_times(python: str, modules: str) -> dict[str, float]:
    """One `python -X importtime` run: microseconds of own import time per top-level package,
    and the total under "(total)"."""
    finished = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {modules}"], capture_output=True, text=True, check=False
    )
    if finished.returncode != 0:
        raise BenchError(f"import {modules} failed: {finished.stderr.strip().splitlines()[-1:]}")
    by_package: dict[str, float] = defaultdict(float)
    for line in finished.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        package = name.strip().split(".")[0]
        by_package[package] += float(own)
        by_package["(total)"] += float(own)
    return by_package


def _import_section(bench: Bench, label: str, modules: str, runs: int) -> Section:
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for package, microseconds in import_times(bench.python, modules).items():
            samples[package].append(microseconds / 1000)
    medians = {package: Summary.of(values).median for package, values in samples.items()}
    total = medians.pop("(total)")
    top = sorted(medians.items(), key=lambda item: item[1], reverse=True)
    shown = top[:10]
    rows: list[tuple[str, ...]] = [(package, format_number(ms), f"{ms / total:.0%}") for package, ms in shown]
    rest = sum(ms for _, ms in top[10:])
    rows += [("everything else", format_number(rest), f"{rest / total:.0%}"), ("total", format_number(total), "100%")]
    about = (
        f"`python -X importtime -c 'import {modules}'`, {runs} runs: the own (self) import time of each "
        f"top-level package, median per package. This is in-process time and leaves out the interpreter's "
        f"start; `-X importtime` itself adds a little."
    )
    return Section(f"Import time: {label}", about, ("package", "median [ms]", "share"), rows)


@case("startup", order=50)
def cli_startup(bench: Bench) -> list[Section]:
    runs = bench.scale(full=20, quick=5)
    progress(f"start-up: import profiles and --help wall time, {runs} rounds")
    sections = [_import_section(bench, label, modules, runs) for label, modules in IMPORTS.items()]
    commands = {
        "python -c pass (venv)": fixed([bench.python, "-c", "pass"]),
        "python -S -c pass": fixed([bench.python, "-S", "-c", "pass"]),
        "sdrun --help": fixed([bench.sdrun_executable, "--help"]),  # not bench.sdrun[0]: that may be nsenter
    }
    executables = {runtime.executable for runtime in bench.peers()}
    for peer in HELP_PEERS:
        if peer in executables:
            commands[f"{peer} --help"] = fixed([peer, "--help"])
    seconds, failures = interleaved(commands, runs)
    samples = milliseconds(seconds)
    headers, rows = comparison(samples, ["sdrun --help"], "ms", failures)
    about = (
        f"Wall time of `--help`: the CLI's start-up cost before it does anything, {runs} interleaved rounds. "
        f"The two Python floors show what any Python CLI pays: the venv's `site` (with its path hooks) and "
        f"the bare interpreter."
    )
    helps = [f"{peer} --help" for peer in ("podman", "systemd-run")]
    sections.append(
        Section(
            "CLI start-up (`--help`)",
            about,
            headers,
            rows,
            headlines=headline(samples, "sdrun --help", helps, "ms", "CLI start-up"),
        )
    )
    return sections
