"""What a network costs a start: one-shot latency on each runtime's bridge network and without one."""

from __future__ import annotations

from bench.core import Bench, Section, case, comparison, interleaved, milliseconds, progress
from bench.runtimes import NETWORK_RUNTIMES, available, oneshot_command

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
