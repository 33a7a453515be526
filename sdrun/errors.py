"""The one exception type library code raises for a user-facing failure.

Library code never exits the process: it raises SdrunError, and the CLI edge
turns it into one line on stderr and an exit status.
"""

from __future__ import annotations

# podman's and docker's convention: 125 means the runtime itself failed, so an
# app's own exit status (0-124) is never confused with ours.
EXIT_RUNTIME_ERROR = 125


class SdrunError(Exception):
    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = EXIT_RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def error_line(message: str, hint: str | None = None, *, program: str = "sdrun") -> str:
    """The one line every front end prints for a failure (the CLI, the network hook, a stage1
    entry, a forked child): `PROGRAM: MESSAGE (hint: HINT)` and a newline."""
    return f"{program}: {message}" + (f" (hint: {hint})" if hint else "") + "\n"


def describe(error: BaseException) -> str:
    """One line for an error shown where no CLI edge exists (a forked child, a stage1 entry)."""
    if isinstance(error, SdrunError):
        return error.message
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    return str(error) or type(error).__name__


class NotFound(SdrunError):
    """A pod, image or file the user named does not exist."""


class SpecError(SdrunError):
    """A container spec (flags or spec file) is invalid."""


class BusUnavailable(SdrunError):
    """No systemd could be reached over D-Bus."""
