"""One-shot latency: start a container running /bin/true, wait for it, clean up."""

from __future__ import annotations

from bench.core import Bench, Section, case, comparison, headline, interleaved, milliseconds, progress
from bench.runtimes import oneshot_command

HEADLINE_PEERS = ("systemd-run", "systemd-nspawn", "podman", "crun")


@case("latency", order=10)
def oneshot_latency(bench: Bench) -> list[Section]:
    rounds = bench.scale(full=30, quick=5)
    progress(f"one-shot latency: {rounds} interleaved rounds of {len(bench.runtimes)} runtimes")
    commands = {runtime.name: oneshot_command(bench, runtime) for runtime in bench.runtimes}
    seconds, failures = interleaved(commands, rounds)
    samples = milliseconds(seconds)
    subjects = [runtime.name for runtime in bench.subjects()]
    headers, rows = comparison(samples, subjects, "ms", failures)
    headlines = [
        item
        for subject in subjects
        for item in headline(samples, subject, HEADLINE_PEERS, "ms", f"one-shot latency, {subject}")
    ]
    about = (
        f"Wall time from spawning the command to reaping it, container removed: `sdrun run --rm`, "
        f"`podman run --rm`, `crun run`/`runc run` (they delete the container when it exits), "
        f"`systemd-run --wait`, `systemd-nspawn`, `bwrap`; app `/bin/true`. {rounds} rounds after 2 warm-up "
        f"rounds, the runtimes interleaved (order rotated each round). Ratios compare medians: above 1x "
        f"means sdrun takes longer."
    )
    return [Section("One-shot latency", about, headers, rows, distributions=samples, headlines=headlines)]
