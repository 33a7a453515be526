"""`python -m sdrun.net.hook setup|teardown POD_DIR`: a pod unit's ExecStartPre= and ExecStopPost=.

Runs as root outside the pod, before the stage1 entry (which then joins the
namespace made here) and after the unit's last process is gone. A failure is
one line on stderr, so in the unit's journal, where `sdrun run` finds it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe
from sdrun.paths import Paths

USAGE = "usage: python -m sdrun.net.hook setup|teardown POD_DIR\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("setup", "teardown"):
        sys.stderr.write(USAGE)
        return EXIT_RUNTIME_ERROR
    pod_dir = Path(argv[2])
    try:
        if argv[1] == "setup":
            from sdrun.net.pod import setup
            from sdrun.pod import load_pod

            setup(Paths.root_of(pod_dir), load_pod(pod_dir))
        else:
            teardown(pod_dir)
    except (SdrunError, OSError) as error:
        sys.stderr.write(f"sdrun network: {describe(error)}\n")
        return EXIT_RUNTIME_ERROR
    return 0


def teardown(pod_dir: Path) -> None:
    """Works from the lease alone: the pod directory may already be gone (a detached --rm)."""
    from sdrun.net import ipam
    from sdrun.net.pod import teardown as undo

    root = Paths.root_of(pod_dir)
    for lease in ipam.all_leases(root):
        if lease.pod == pod_dir.name:
            undo(root, lease.pod, lease.network)


def commands(pod_dir: Path) -> tuple[list[str], list[str]]:
    """The set-up and tear-down command lines for a pod's unit, with the venv's interpreter."""
    base = [sys.executable, "-m", "sdrun.net.hook"]
    return [*base, "setup", str(pod_dir)], [*base, "teardown", str(pod_dir)]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
