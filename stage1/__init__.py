"""stage1: the backends that isolate a pod, behind one versioned interface (docs/stage1.md).

This package's own module holds only the exec contract of the in-unit entries,
`python -m stage1.<backend> run --interface=N POD_DIR` (units start it as `python -S -P -c`:
see stage1.interface.entry_command), and imports nothing
heavy: every unit imports it before its app runs. The interface stage0 uses
(Stage1, UnitPlan, the registry) lives in stage1.interface.
"""

from __future__ import annotations

import marshal
import os
import sys

from sdrun.errors import error_line

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, TypedDict

    class EntryPlan(TypedDict):
        """What every backend's plan holds, whatever else its own entry reads from it."""

        interface: int  # the INTERFACE_VERSION of the planner that wrote it


# Version 1: plan(), exec_in_scope(), enter(), gc(); entries take `run --interface=1 POD_DIR`;
# a plan file carries {"interface": 1} (one without the key is of version 1, as rkt assumes).
# docs/stage1.md says what came in which version.
INTERFACE_VERSION = 1
EXIT_STAGE1_FAILED = 125  # as sdrun.errors.EXIT_RUNTIME_ERROR: the runtime, not the app, failed
INTERFACE_FLAG = "--interface="


def entry_pod_dir(argv: list[str]) -> str:
    """The pod directory an entry was started for; exit 125 in one line if argv breaks the contract:
    a usage line, or which version the unit asks for when this entry does not implement it (a unit
    written by another sdrun than the one now installed)."""
    if len(argv) == 4 and argv[1] == "run" and argv[2].startswith(INTERFACE_FLAG):
        asked = argv[2].removeprefix(INTERFACE_FLAG)
        if asked == str(INTERFACE_VERSION):
            return argv[3]
        fail(unknown_version(f"the unit of {argv[3]}", asked))
    sys.stderr.write(f"usage: python -m stage1.BACKEND run --interface={INTERFACE_VERSION} POD_DIR\n")
    sys.exit(EXIT_STAGE1_FAILED)


def unknown_version(what: str, version: object) -> str:
    return (
        f"{what} is for stage1 interface version {version}, and this sdrun's entry implements version "
        f"{INTERFACE_VERSION}: write it again with this sdrun (sdrun run, or sdrun install --replace)"
    )


def read_plan(path: str) -> Any:
    """The plan a backend's planner wrote for its entry (marshal: both run the same interpreter),
    checked against the version this entry implements; exit 125 in one line if it is of another
    version or damaged. The caller types it (a TypedDict of its own, an EntryPlan)."""
    try:
        with open(path, "rb") as stream:
            plan = marshal.load(stream)
    except (ValueError, EOFError, TypeError) as error:
        fail(f"{path} is damaged: {error}")
    return checked_plan(path, plan)


def checked_plan(path: str, plan: object) -> Any:
    """plan, read from path, if it is a plan of the version this entry implements; else exit 125 in one line."""
    if not isinstance(plan, dict):
        fail(f"{path} is damaged: not a plan")
    version = plan.get("interface", 1)
    if version != INTERFACE_VERSION:
        fail(unknown_version(path, version))
    return plan


def write_plan(path: str, plan: EntryPlan) -> None:
    """Write an entry's plan: the planner's side of read_plan."""
    with open(path, "wb") as stream:
        marshal.dump(dict(plan), stream)


def fail(message: str) -> NoReturn:
    """An entry's last words: one line to stderr (so to the unit's journal), exit 125."""
    sys.stderr.write(error_line(message, program="sdrun stage1"))
    sys.stderr.flush()
    os._exit(EXIT_STAGE1_FAILED)
