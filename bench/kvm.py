"""The kvm stage1: boot-to-exit time of /bin/true and host memory per running pod, beside the namespace stage1.

A case of `python -m bench` (`--only kvm`), and runnable alone:

    .venv/bin/python -m tests.harness.sdboot -- .venv/bin/python -m bench.kvm [--quick]

The accelerator is sdrun's default (auto: KVM where a guest boots, else TCG);
the report says which one ran.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.core import Bench, BenchError, Section, case, comparison, fixed, interleaved, milliseconds, run_command
from bench.memory import MIB, Process, _new_processes, _process_keys
from bench.stats import format_number

STAGE1S = ("kvm", "namespace")
READY_LINE = "up"
APP_SCRIPT = f"echo {READY_LINE}; exec sleep 86400"


def true_command(bench: Bench, stage1: str) -> list[str]:
    return [
        *bench.sdrun,
        "run",
        "--rm",
        "--stage1",
        stage1,
        "--net",
        "none",
        "--rootfs",
        str(bench.rootfs),
        "--",
        "/bin/true",
    ]


def boot_to_exit(bench: Bench) -> Section:
    commands = {f"sdrun {stage1}": fixed(true_command(bench, stage1)) for stage1 in STAGE1S}
    seconds, failures = interleaved(commands, rounds=bench.scale(full=10, quick=3), warmup=1)
    headers, rows = comparison(milliseconds(seconds), ["sdrun kvm"], "ms", failures)
    about = (
        "`sdrun run --rm --stage1 STAGE1 --rootfs DIR -- /bin/true` in the foreground, from the command's start "
        "to its exit: for kvm that is qemu's start, the guest kernel's boot, the init, the app, the power-off "
        f"and the unit's end. Accelerator: {accelerator(bench)}."
    )
    return Section("kvm stage1: boot to exit", about, headers, rows, distributions=milliseconds(seconds))


def accelerator(bench: Bench) -> str:
    """Which accelerator the kvm stage1 chose here (its cached probe verdict)."""
    verdicts = sorted((bench.scratch / "sdrun" / "cache" / "kvm").glob("accel-*"))
    return verdicts[0].read_text().strip().upper() if verdicts else "TCG (no /dev/kvm)"


def footprint(bench: Bench, stage1: str, pods: int) -> list[Process]:
    """Every process that appears while `pods` pods run an idle app: for kvm, qemu (whose RSS
    holds the guest's memory, the app's included), virtiofsd and vm.sh; for namespace, the app."""
    before = _process_keys()
    names = [bench.unique(f"mem-{stage1}") for _ in range(pods)]
    try:
        for name in names:
            command = [
                *bench.sdrun,
                "run",
                "-d",
                "--stage1",
                stage1,
                "--net",
                "none",
                "--name",
                name,
                "--rootfs",
                str(bench.rootfs),
            ]
            run_command([*command, "--", "/bin/sh", "-c", APP_SCRIPT])
        for name in names:
            wait_until_up(bench, name)
        time.sleep(1.0)  # let the guests settle after their app started
        return _new_processes(before)
    finally:
        for name in names:
            with contextlib.suppress(BenchError):
                run_command([*bench.sdrun, "rm", "-f", name])


def wait_until_up(bench: Bench, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while READY_LINE not in run_command([*bench.sdrun, "logs", name], capture=True).splitlines():
        if time.monotonic() > deadline:
            raise BenchError(f"pod {name} did not come up within {timeout:.0f} s")
        time.sleep(0.2)


def resident_memory(bench: Bench) -> Section:
    pods = bench.scale(full=4, quick=2)
    rows = []
    for stage1 in STAGE1S:
        try:
            processes = footprint(bench, stage1, pods)
        except BenchError as error:
            rows.append((f"sdrun {stage1}", f"failed: {error}", "", "", ""))
            continue
        counts = Counter(process.name for process in processes)
        qemu = sum(process.rss for process in processes if process.name.startswith("qemu"))
        rows.append(
            (
                f"sdrun {stage1}",
                format_number(sum(process.rss for process in processes) / pods / MIB),
                format_number(sum(process.pss for process in processes) / pods / MIB),
                format_number(qemu / pods / MIB) if qemu else "-",
                ", ".join(f"{name} x{count / pods:g}" for name, count in counts.most_common()),
            )
        )
    headers = ("stage1", "RSS per pod [MiB]", "PSS per pod [MiB]", "of which qemu [MiB]", "processes per pod")
    about = (
        f"{pods} pods per stage1 running `sh -c 'echo up; exec sleep 86400'` (kvm: default guest RAM, 512 MiB, "
        "touched only as the guest uses it), measured 1 s after every pod printed `up`: the resident (RSS) and "
        "proportional (PSS) sets of every process that appeared on the host, summed and divided by the pod count. "
        "A kvm pod's app runs inside the guest, so qemu's RSS includes it and the guest kernel."
    )
    return Section("kvm stage1: host memory per running pod", about, headers, rows)


@case("kvm", order=60)
def kvm_stage1(bench: Bench) -> list[Section]:
    return [boot_to_exit(bench), resident_memory(bench)]


def main(argv: list[str]) -> int:
    """Run the kvm case alone and print its tables as Markdown."""
    from bench.report import table

    project = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(dir="/var/lib/sdrun" if Path("/var/lib/sdrun").is_dir() else None) as scratch:
        context = Bench(project, project / "build" / "rootfs", Path(scratch), "--quick" in argv, [])
        for section in kvm_stage1(context):
            print(f"## {section.title}\n\n{section.about}\n\n{table(section.headers, section.rows)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
