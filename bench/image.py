"""Image pull + unpack: `sdrun image pull` against `skopeo copy` + `umoci unpack`, from the same local registry.

The image (built once with umoci into build/bench-image, then cached) is busybox plus
four layers of 26 MB each, half random and half text, so over 100 MB uncompressed.
Debian's docker-registry serves it on 127.0.0.1. Every round starts from an empty store
(sdrun) or an empty layout and bundle (skopeo + umoci); runs alternate. Peak memory is
the largest ru_maxrss of the round's processes (os.wait4, so each process's own).

    python -m bench.image [--rounds N]      on its own, printing the table
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.core import Bench, BenchError, Section, case, progress
from bench.stats import Summary, format_number, format_ratio, ratio

PROJECT = Path(__file__).resolve().parents[1]
LAYERS = 4
LAYER_MB = 26
SDRUN = "sdrun image pull"
PEER = "skopeo copy + umoci unpack"


def build_image(project: Path) -> Path:
    """The benchmark image as an OCI layout (tag `big`), built on first use."""
    from tests.test_image_support import umoci_change, umoci_image

    layout = project / "build" / "bench-image" / "layout"
    if (layout / "index.json").exists() and "big" in (layout / "index.json").read_text():
        return layout
    shutil.rmtree(layout.parent, ignore_errors=True)
    progress("image: building the benchmark image with umoci")
    umoci_image(layout, "big", project / "build" / "rootfs")
    half = LAYER_MB * 1024 * 1024 // 2
    for layer in range(LAYERS):
        change = f"head -c {half} /dev/urandom > random{layer}; yes line-{layer} | head -c {half} > text{layer}"
        umoci_change(layout, "big", "big", change)
    return layout


def _measured(argv: Sequence[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in KiB of one command, as wait4 reports for it alone."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        raise BenchError(f"{' '.join(argv[:4])} exited {process.returncode}: {process.stderr.read().decode()[-300:]}")
    return seconds, usage.ru_maxrss


def _sdrun_round(project: Path, work: Path, reference: str) -> tuple[float, int]:
    root = work / "sdrun-root"
    shutil.rmtree(root, ignore_errors=True)
    return _measured([str(project / ".venv/bin/sdrun"), "--root", str(root), "image", "pull", "-q", reference])


def _peer_round(work: Path, reference: str) -> tuple[float, int]:
    layout, bundle = work / "peer-layout", work / "peer-bundle"
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:big"]
    copy_seconds, copy_rss = _measured(copy)
    unpack_seconds, unpack_rss = _measured(["umoci", "unpack", "--image", f"{layout}:big", str(bundle)])
    return copy_seconds + unpack_seconds, max(copy_rss, unpack_rss)


def measure_pulls(project: Path, work: Path, rounds: int) -> dict[str, tuple[list[float], list[int]]]:
    """{runtime: (wall seconds, peak KiB)} over `rounds` alternating rounds from a registry started here."""
    from tests.test_image_support import local_registry, run

    layout = build_image(project)
    results: dict[str, tuple[list[float], list[int]]] = {SDRUN: ([], []), PEER: ([], [])}
    with local_registry(work / "registry") as registry:
        reference = registry.push(f"oci:{layout}:big", "bench/big:1")
        run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}")
        for number in range(rounds):
            progress(f"image: round {number + 1}/{rounds}")
            order = [SDRUN, PEER] if number % 2 == 0 else [PEER, SDRUN]
            for name in order:
                seconds, peak = (
                    _sdrun_round(project, work, reference) if name == SDRUN else _peer_round(work, reference)
                )
                results[name][0].append(seconds)
                results[name][1].append(peak)
    return results


def table(results: dict[str, tuple[list[float], list[int]]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    headers: tuple[str, ...] = (
        "runtime",
        "median wall [s]",
        "median peak RSS [MiB]",
        "n",
        f"{SDRUN} ÷ it: time",
        "memory",
    )
    mine_time = Summary.of(results[SDRUN][0]).median
    mine_memory = Summary.of([float(kib) for kib in results[SDRUN][1]]).median
    rows: list[tuple[str, ...]] = []
    for name, (seconds, peaks) in results.items():
        wall = Summary.of(seconds).median
        memory = Summary.of([float(kib) for kib in peaks]).median
        rows.append(
            (
                name,
                format_number(wall),
                format_number(memory / 1024),
                str(len(seconds)),
                format_ratio(ratio(mine_time, wall)),
                format_ratio(ratio(mine_memory, memory)),
            )
        )
    return headers, rows


@case("image", order=70)
def image_pull(bench: Bench) -> list[Section]:
    results = measure_pulls(bench.project, bench.scratch / "image", bench.scale(full=5, quick=1))
    headers, rows = table(results)
    about = (
        f"Pull and unpack of a {LAYERS + 1}-layer image (over 100 MB unpacked) from Debian's docker-registry "
        "on 127.0.0.1, each round into an empty store; the peer is `skopeo copy` to an OCI layout then "
        "`umoci unpack`. Peak memory: the largest ru_maxrss of the round's processes."
    )
    mine = Summary.of(results[SDRUN][0]).median
    peer = Summary.of(results[PEER][0]).median
    headlines = [("image pull", f"{SDRUN} {format_number(mine)} s — {format_ratio(ratio(mine, peer))} {PEER}")]
    return [Section("Image pull and unpack", about, headers, rows, headlines=headlines)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.image", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="sdrun-bench-image-") as work:
        headers, rows = table(measure_pulls(PROJECT, Path(work), options.rounds))
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
