"""stage1: the backends that isolate a pod, behind one versioned interface (docs/stage1.md).

This package's own module holds only the exec contract of the in-unit entries,
`python -m stage1.<backend> run --interface=N POD_DIR` (units start it as `python -S -P -c`:
see stage1.interface.entry_command), and imports nothing
heavy: every unit imports it before its app runs. The interface stage0 uses
(Stage1, UnitPlan, the registry) lives in stage1.interface.
"""

from __future__ import annotations

import os
import sys

from sdrun.errors import error_line

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# Version 1: plan(), exec_in_scope(), enter(), gc(); entries take `run --interface=1 POD_DIR`.
INTERFACE_VERSION = 1
EXIT_STAGE1_FAILED = 125  # as sdrun.errors.EXIT_RUNTIME_ERROR: the runtime, not the app, failed


def entry_pod_dir(argv: list[str]) -> str:
    """The pod directory an entry was started for; exit 125 with a usage line if argv breaks the contract."""
    if len(argv) != 4 or argv[1] != "run" or argv[2] != f"--interface={INTERFACE_VERSION}":
        sys.stderr.write(f"usage: python -m stage1.BACKEND run --interface={INTERFACE_VERSION} POD_DIR\n")
        sys.exit(EXIT_STAGE1_FAILED)
    return argv[3]


def fail(message: str) -> NoReturn:
    """An entry's last words: one line to stderr (so to the unit's journal), exit 125."""
    sys.stderr.write(error_line(message, program="sdrun stage1"))
    sys.stderr.flush()
    os._exit(EXIT_STAGE1_FAILED)
