"""Containers per minute: one-shot containers back to back, and with 8 in flight at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from bench.core import Bench, BenchError, Section, case, comparison, headline, progress, run_command, wait_until_idle
from bench.runtimes import Runtime, oneshot_command

PARALLELISM = 8
HEADLINE_PEERS = ("podman", "systemd-nspawn", "crun")


def _batch_rate(make_command: Callable[[], Sequence[str]], runs: int, workers: int) -> float:
    """Containers per minute over one batch of `runs` one-shot containers, `workers` at a time."""
    start = time.perf_counter()
    if workers == 1:
        for _ in range(runs):
            run_command(make_command())
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(run_command, make_command()) for _ in range(runs)]:
                future.result()
    return runs * 60 / (time.perf_counter() - start)


def interleaved_rates(
    bench: Bench, runtimes: Sequence[Runtime], batches: int, runs: int, workers: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Batches interleaved across runtimes (A B A B ...), as single runs are in the latency case."""
    rates: dict[str, list[float]] = {runtime.name: [] for runtime in runtimes}
    failures: dict[str, str] = {}
    for batch in range(batches):
        shift = batch % len(runtimes)
        for runtime in [*runtimes[shift:], *runtimes[:shift]]:
            if runtime.name in failures:
                continue
            wait_until_idle()  # a batch starts on a quiet machine, whoever ran before it
            try:
                rates[runtime.name].append(_batch_rate(oneshot_command(bench, runtime), runs, workers))
            except BenchError as error:
                failures[runtime.name] = str(error)
    return {name: values for name, values in rates.items() if name not in failures}, failures


@case("throughput", order=20)
def containers_per_minute(bench: Bench) -> list[Section]:
    subjects = [runtime.name for runtime in bench.subjects()]
    sections = []
    plans = (
        ("sequential", 1, bench.scale(full=5, quick=2), bench.scale(full=20, quick=5)),
        (f"{PARALLELISM}-way parallel", PARALLELISM, bench.scale(full=4, quick=2), bench.scale(full=32, quick=8)),
    )
    for label, workers, batches, runs in plans:
        progress(f"throughput {label}: {batches} batches of {runs} containers per runtime")
        rates, failures = interleaved_rates(bench, bench.runtimes, batches, runs, workers)
        headers, rows = comparison(rates, subjects, "containers/min", failures)
        headers = tuple(header.replace(" ÷ it", " ÷ it (above 1x: sdrun is faster)") for header in headers)
        about = (
            f"One-shot containers (`/bin/true`, removed after) started {label}: {batches} batches of {runs} runs "
            f"per runtime ({batches * runs} in all), the batches interleaved across runtimes, each started once the "
            f"CPUs were 90% idle (what the previous batch left running had finished); the rate of each batch is one "
            f"sample. n counts batches."
        )
        sections.append(
            Section(
                f"Containers per minute, {label}",
                about,
                headers,
                rows,
                headlines=[
                    item
                    for subject in subjects
                    for item in headline(rates, subject, HEADLINE_PEERS, "/min", f"containers/min {label}, {subject}")
                ],
            )
        )
    return sections
