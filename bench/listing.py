"""`sdrun list` with many pods, against `podman ps -a` with as many containers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from bench.core import (
    Bench,
    Section,
    case,
    comparison,
    fixed,
    headline,
    interleaved,
    milliseconds,
    progress,
    run_command,
)

PARALLELISM = 8


def _create(argvs: list[list[str]]) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=PARALLELISM) as pool:
        for future in [pool.submit(run_command, argv) for argv in argvs]:
            future.result()
    return time.perf_counter() - start


@case("list", order=40)
def list_many(bench: Bench) -> list[Section]:
    pods = bench.scale(full=500, quick=50)
    rounds = bench.scale(full=10, quick=3)
    sdrun = [str(bench.project / ".venv/bin/sdrun"), "--root", str(bench.scratch / "sdrun-list")]
    rootfs = str(bench.rootfs)
    has_podman = any(runtime.name == "podman" for runtime in bench.runtimes)
    commands = {"sdrun list": fixed([*sdrun, "list"]), "sdrun list --json": fixed([*sdrun, "list", "--json"])}
    if has_podman:
        commands["podman ps -a"] = fixed(["podman", "ps", "-a"])
    empty, _ = interleaved(commands, rounds)

    progress(f"list: creating {pods} exited sdrun pods" + (" and podman containers" if has_podman else ""))
    names = [bench.unique("list") for _ in range(pods)]
    setup = f"{pods} pods made by `sdrun run -d --stage1 fly -- /bin/true`"
    seconds = _create(
        [
            [*sdrun, "run", "-d", "--stage1", "fly", "--name", name, "--rootfs", rootfs, "--", "/bin/true"]
            for name in names
        ]
    )
    setup += f" ({seconds:.0f} s, {PARALLELISM} at a time)"
    if has_podman:
        seconds = _create(
            [
                ["podman", "run", "-d", "--network", "none", "--name", name, "--rootfs", rootfs, "/bin/true"]
                for name in names
            ],
        )
        setup += f" and {pods} containers by `podman run -d` ({seconds:.0f} s)"
    try:
        full, failures = interleaved(commands, rounds)
    finally:
        progress("list: removing them")
        start = time.perf_counter()
        run_command([*sdrun, "gc"], timeout=600)
        gc_seconds = time.perf_counter() - start
        for first in range(0, len(names), 100) if has_podman else ():
            run_command(["podman", "rm", "-f", *names[first : first + 100]], timeout=600)

    samples = {f"{name} ({pods})": values for name, values in milliseconds(full).items()}
    samples |= {f"{name} (none)": values for name, values in milliseconds(empty).items()}
    headers, rows = comparison(samples, [f"sdrun list ({pods})"], "ms", failures)
    about = (
        f"Listing {pods} exited pods/containers, and an empty store for the fixed cost. Set-up: {setup}. "
        f"{rounds} interleaved rounds after 2 warm-up rounds. `sdrun gc` then removed the {pods} pods in "
        f"{gc_seconds:.1f} s."
    )
    headlines = headline(samples, f"sdrun list ({pods})", [f"podman ps -a ({pods})"], "ms", f"list with {pods} pods")
    return [Section(f"Listing {pods} pods", about, headers, rows, headlines=headlines)]
