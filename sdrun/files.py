"""Crash-safe file writes: the one helper every file sdrun replaces whole goes through.

A file is written under a temporary name in its own directory, fsynced, renamed over its
name, and its directory fsynced (as rkt writes its pod manifests): a reader sees the old
content or the new, never a part, and after a crash the file is the old one or the new one,
never empty. A write that fails leaves the file as it was and no temporary file behind.

This module imports only os: pod creation, a lease and the unit's exit record write through it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs a hot path ~5 ms; mypy honours the name
if TYPE_CHECKING:
    from types import TracebackType
    from typing import BinaryIO

StrPath = str | os.PathLike[str]
DEFAULT_MODE = 0o666  # as open() creates a file: the umask decides


def temporary_name(path: StrPath) -> str:
    """Where path's next content is written: beside it (a rename does not cross filesystems),
    hidden, and the writer's own (two processes replacing one file do not share one)."""
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.tmp")


def fsync_directory(path: StrPath) -> None:
    """Make the names in a directory (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class atomic_file:
    """`with atomic_file(path) as stream:` a binary stream whose content replaces path's once the
    block ends; if it raises (or the write, fsync or rename fails), path is left as it was and the
    temporary file removed. mode: the new file's permissions (less the umask), from its first byte.
    A class rather than a contextlib.contextmanager: contextlib is not free to import."""

    def __init__(self, path: StrPath, mode: int = DEFAULT_MODE) -> None:
        self.path = os.fspath(path)
        self.temporary = temporary_name(self.path)
        self.mode = mode

    def __enter__(self) -> BinaryIO:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(self.temporary, flags, self.mode)
        except FileExistsError:  # a crashed writer's, whose pid this process has now: not its mode
            os.unlink(self.temporary)
            fd = os.open(self.temporary, flags, self.mode)
        self.stream: BinaryIO = os.fdopen(fd, "wb")
        return self.stream

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.stream.flush()
                os.fsync(self.stream.fileno())
            self.stream.close()
            if kind is None:
                os.rename(self.temporary, self.path)
        except BaseException:
            self._discard()
            raise
        if kind is not None:
            self._discard()
            return
        fsync_directory(os.path.dirname(self.path) or ".")

    def _discard(self) -> None:
        self.stream.close()
        try:  # noqa: SIM105 - contextlib.suppress: see the class's docstring
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def write_atomically(path: StrPath, data: str | bytes, mode: int = DEFAULT_MODE) -> None:
    """Replace path's content with data (text is written as UTF-8), crash-safely: see atomic_file."""
    with atomic_file(path, mode) as stream:
        stream.write(data.encode() if isinstance(data, str) else data)
