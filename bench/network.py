"""What a network costs: one-shot latency, and 8-way throughput, on each runtime's bridge network and without one."""

from __future__ import annotations

from bench.core import Bench, Section, case, comparison, headline, interleaved, milliseconds, progress
from bench.runtimes import NETWORK_RUNTIMES, available, oneshot_command
from bench.throughput import PARALLELISM, interleaved_rates

SUBJECT = "sdrun namespace --net default"


@case("network", order=15)
def network_latency(bench: Bench) -> list[Section]:
    runtimes, missing = available(NETWORK_RUNTIMES)
    rounds = bench.scale(full=20, quick=3)
    progress(f"network latency: {rounds} interleaved rounds of {len(runtimes)} runtimes")
    commands = {runtime.name: oneshot_command(bench, runtime) for runtime in runtimes}
    seconds, failures = interleaved(commands, rounds)
    failures.update(missing)
    headers, rows = comparison(milliseconds(seconds), [SUBJECT, "sdrun namespace --net none"], "ms", failures)
    about = (
        "`sdrun run --rm --net default` (a veth pair on the `sdrun0` bridge, a lease, the netns, torn down by "
        "the unit's ExecStopPost) against `--net none` (a namespace with loopback only), and podman's bridge "
        "network (`podman run --rm --network bridge`, netavark or CNI) against `--network none`; app "
        f"`/bin/true`, busybox rootfs, {rounds} interleaved rounds after 2 warm-up rounds. The runs happen in "
        "the harness's own network namespace, so neither runtime touches the host's."
    )
    return [Section("Start latency with a network", about, headers, rows)]


@case("network-throughput", order=21)
def network_throughput(bench: Bench) -> list[Section]:
    """Many pods starting and stopping at once on one bridge: their set-ups and tear-downs must not queue."""
    runtimes, missing = available(
        tuple(runtime for runtime in NETWORK_RUNTIMES if runtime.name != "podman --network none")
    )
    batches, runs = bench.scale(full=4, quick=2), bench.scale(full=32, quick=8)
    progress(f"network throughput {PARALLELISM}-way: {batches} batches of {runs} containers per runtime")
    rates, failures = interleaved_rates(bench, runtimes, batches, runs, PARALLELISM)
    failures.update(missing)
    headers, rows = comparison(rates, [SUBJECT], "containers/min", failures)
    headers = tuple(header.replace(" ÷ it", " ÷ it (above 1x: sdrun is faster)") for header in headers)
    about = (
        f"One-shot containers (`/bin/true`, removed after) started {PARALLELISM} at a time on each runtime's "
        f"bridge network (sdrun's `--net default`, podman's `--network bridge`), with sdrun's `--net none` for "
        f"reference: {batches} batches of {runs} runs per runtime, interleaved and each started on an idle "
        "machine as in the throughput case; the rate of each batch is one sample. n counts batches."
    )
    title = f"Containers per minute, {PARALLELISM}-way parallel, on a bridge network"
    return [
        Section(
            title,
            about,
            headers,
            rows,
            headlines=headline(
                rates, SUBJECT, ("podman --network bridge",), "/min", f"containers/min {PARALLELISM}-way on a bridge"
            ),
        )
    ]
