"""The `sdrun` command: its entry point, and the one place errors are printed.

A plain `sdrun run` command line is read and run without importing click (see
sdrun.cli.runcommand: it saves every container start ~20 ms); every other one
goes to the click command line in sdrun.cli.commands.
"""

from __future__ import annotations

import contextlib
import os
import sys

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, error_line

TYPE_CHECKING = False  # not typing's: the fast path of `run` need not import typing here
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import NoReturn


def die(message: str, hint: str | None = None, exit_code: int = EXIT_RUNTIME_ERROR) -> NoReturn:
    sys.stderr.write(error_line(message, hint))
    sys.exit(exit_code)


@contextlib.contextmanager
def errors_reported(*, debug: bool, passed_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a failure into one line on stderr and an exit status; tracebacks only with --debug.
    Exceptions of the passed_on types go through untouched."""
    try:
        yield
    except passed_on:
        raise
    except SdrunError as error:
        if debug:
            raise
        die(error.message, error.hint, error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `sdrun list | head`: the reader left; say nothing more, as cat would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + 13)  # SIGPIPE
    except Exception as error:
        if debug:
            raise
        die(f"internal error: {type(error).__name__}: {error}", "run with --debug for the traceback")


def entry_point() -> None:
    """The `sdrun` command. It leaves with os._exit once its output is flushed: tearing down the
    interpreter (click, dbus-next and the rest) costs ~33 ms per command and does nothing a
    command needs, since every `with` and `finally` has run by then."""
    status = run_command_line(sys.argv[1:])
    if "logging" in sys.modules:  # --debug, or a library, imported it: flush its handlers
        import logging

        logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = 120  # what the interpreter itself exits with when it cannot flush them
    os._exit(status)


def run_command_line(argv: Sequence[str]) -> int:
    """Run one sdrun command line (argv without the program name); return its exit status."""
    try:
        if os.geteuid() != 0:
            _refuse_without_root(argv)
        status = _run_without_click(argv)
        if status is None:
            from sdrun.cli.commands import main

            main(list(argv), prog_name="sdrun")
            status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    return status


HELP_OPTIONS = ("-h", "--help", "--version")


def _refuse_without_root(argv: Sequence[str]) -> None:
    """Every verb needs root: pods are system services (starting one asks polkit, which says no to
    a user), and all sdrun keeps is root's. One line says so, before a verb fails on the way there.
    Help, and a command line click refuses anyway (an unknown verb), are left alone."""
    from sdrun.cli.commands import main

    options = argv[: argv.index("--")] if "--" in argv else argv
    rest = _after_group_options(argv)
    verb = rest[0] if rest else None
    if verb in main.commands and not any(arg in HELP_OPTIONS for arg in options):
        die("sdrun needs root: its pods are systemd system services, and its state is root's", f"sudo sdrun {verb} ...")


def _after_group_options(argv: Sequence[str]) -> Sequence[str]:
    """argv from the verb on: past --debug and --root DIR (or --root=DIR)."""
    index = 0
    while index < len(argv):
        if argv[index] == "--root":
            index += 2
        elif argv[index] == "--debug" or argv[index].startswith("--root="):
            index += 1
        else:
            break
    return argv[index:]


def _run_without_click(argv: Sequence[str]) -> int | None:
    """Run a plain `sdrun run` command line; None for any other, which click then reads."""
    from sdrun.cli import runcommand

    command_line = runcommand.parse(argv)
    if command_line is None:
        return None
    from sdrun.paths import Paths

    with errors_reported(debug=False):
        return runcommand.run_verb(Paths.from_env(command_line.root), command_line.options, command_line.args)
    return None  # not reached: errors_reported leaves by SystemExit  # pragma: no cover


def _exit_status(code: object) -> int:
    """As the interpreter turns SystemExit's code into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1
