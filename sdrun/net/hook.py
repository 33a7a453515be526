"""`python -m sdrun.net.hook setup POD_DIR`: a pod unit's ExecStartPre=; commands() gives its ExecStopPost= too.

Runs as root outside the pod, before the stage1 entry (which then joins the
namespace made here). A failure is one line on stderr, so in the unit's
journal, where `sdrun run` finds it. The tear-down after the unit's last
process is gone is sdrun.net.unplug, run by path (unplug_entry.py) with
`python -S -P`: a process ~30 ms lighter than this module's (`teardown
POD_DIR` here does the same, for units made before it).

systemd bounds each ExecStopPost= command by the unit's TimeoutStopSec=, the
pod's --stop-timeout, then kills it: the tear-down first asks for
TEARDOWN_BUDGET_USEC more (EXTEND_TIMEOUT_USEC=). That needs the interpreter to
start within the timeout, which on a busy machine (fifty pods stopping at once)
takes seconds: a pod whose stop timeout is shorter than DETACH_TEARDOWN_BELOW
has its tear-down run as a unit of its own (systemd-run --wait, ~9 ms more),
which its unit's timeout can cut short the wait for, never the tear-down.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe, error_line
from sdrun.paths import Paths

PROGRAM = "sdrun network"  # as its lines in the unit's journal begin
USAGE = "usage: python -m sdrun.net.hook setup|teardown POD_DIR\n"
UNPLUG = Path(__file__).with_name("unplug_entry.py")  # run by path: see sdrun.net.unplug
DETACH_TEARDOWN_BELOW = 10.0  # seconds of stop timeout (the stage1s' default is 10 s)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("setup", "teardown"):
        sys.stderr.write(USAGE)
        return EXIT_RUNTIME_ERROR
    if argv[1] == "teardown":
        from sdrun.net import unplug

        return unplug.main(argv)
    pod_dir = Path(argv[2])
    try:
        from sdrun.net.pod import setup
        from sdrun.pod import load_pod

        setup(Paths.root_of(pod_dir), load_pod(pod_dir))
    except (SdrunError, OSError) as error:
        sys.stderr.write(error_line(describe(error), program=PROGRAM))
        return EXIT_RUNTIME_ERROR
    return 0


def commands(pod_dir: Path, stop_timeout: float | None = None) -> tuple[list[str], list[str]]:
    """The set-up and tear-down command lines for a pod's unit, with the venv's interpreter;
    stop_timeout: the pod's --stop-timeout, if it has one (see the module's docstring)."""
    tear_down = [sys.executable, "-S", "-P", str(UNPLUG), "teardown", str(pod_dir)]
    if stop_timeout is not None and stop_timeout < DETACH_TEARDOWN_BELOW:
        tear_down = [*_unit_of_its_own(pod_dir.name), *tear_down]
    return [sys.executable, "-m", "sdrun.net.hook", "setup", str(pod_dir)], tear_down


def _unit_of_its_own(pod_uuid: str) -> list[str]:
    """systemd-run, waiting for the unit it starts; its lines in the journal are the pod's (SDRUN_POD=)."""
    return [
        shutil.which("systemd-run") or "/usr/bin/systemd-run",
        "--wait",
        "--quiet",
        "--collect",
        f"--unit=sdrun-teardown-{pod_uuid}",
        "--description=sdrun network tear-down",
        "--property=SyslogIdentifier=sdrun-network",
        f"--property=LogExtraFields=SDRUN_POD={pod_uuid}",
        "--",
    ]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
