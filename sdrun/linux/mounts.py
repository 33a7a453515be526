"""Mount plans as data: small operations that describe themselves, then execute.

Targets are paths inside a container root. Each is opened with
openat2(RESOLVE_IN_ROOT) and the mount lands on /proc/self/fd/N, so a symlink
in the image (a volume target pointing at `/`, say) cannot redirect it onto
the host.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import (
    bind_in_root,
    exists_in_root,
    make_mount_point,
    mount_in_root,
    open_in_root,
    remount_read_only,
)


def _log_debug(message: str) -> None:
    # Not the logging module: the stage1 entries import this file, and logging costs them ~4 ms.
    if "logging" in sys.modules:  # --debug configured it
        import logging

        logging.getLogger("sdrun.mounts").debug("%s", message)


class MountOperation:
    target: str

    def describe(self) -> str:
        raise NotImplementedError

    def execute(self, root: Path) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class BindMount(MountOperation):
    source: str
    target: str
    read_only: bool = False

    def describe(self) -> str:
        return f"bind {self.source} on {self.target}{' (read-only)' if self.read_only else ''}"

    def execute(self, root: Path) -> None:
        bind_in_root(self.source, root, self.target, self.read_only)


@dataclass(frozen=True)
class FilesystemMount(MountOperation):
    fstype: str
    target: str
    flags: int = 0
    options: str | None = None

    def describe(self) -> str:
        return f"mount {self.fstype} on {self.target}" + (f" ({self.options})" if self.options else "")

    def execute(self, root: Path) -> None:
        make_mount_point(root, self.target, directory=True)
        mount_in_root(self.fstype, root, self.target, self.fstype, self.flags, self.options)


def execute_plan(plan: Sequence[MountOperation], root: Path) -> None:
    for operation in plan:
        _log_debug(operation.describe())
        operation.execute(root)


@dataclass(frozen=True)
class MaskPath(MountOperation):
    """Hide target: /dev/null over a file, an empty read-only tmpfs over a directory (runc's masked paths)."""

    target: str

    def describe(self) -> str:
        return f"mask {self.target}"

    def execute(self, root: Path) -> None:
        try:
            with open_in_root(root, self.target, os.O_PATH) as fd:
                path = f"/proc/self/fd/{fd}"
                if os.path.isdir(path):
                    sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "size=0")
                else:
                    sc.mount("/dev/null", path, None, sc.MS_BIND)
        except FileNotFoundError:
            pass  # nothing to hide on this kernel


@dataclass(frozen=True)
class ReadOnlyPath(MountOperation):
    """Bind target onto itself, read-only (runc's read-only paths); skipped when absent."""

    target: str

    def describe(self) -> str:
        return f"make {self.target} read-only"

    def execute(self, root: Path) -> None:
        if not exists_in_root(root, self.target):
            return
        with open_in_root(root, self.target, os.O_PATH) as fd:
            path = f"/proc/self/fd/{fd}"
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        remount_read_only(root, self.target)


@dataclass(frozen=True)
class Symlink(MountOperation):
    """Create target as a symlink to link_target unless something is there already."""

    target: str
    link_target: str

    def describe(self) -> str:
        return f"link {self.target} -> {self.link_target}"

    def execute(self, root: Path) -> None:
        parent, _, name = self.target.rpartition("/")
        with (
            open_in_root(root, parent or "/", os.O_PATH | os.O_DIRECTORY) as directory,
            contextlib.suppress(FileExistsError),
        ):
            os.symlink(self.link_target, name, dir_fd=directory)


@dataclass(frozen=True)
class ReadOnlyRoot(MountOperation):
    """The last step of a --read-only container: its root mount becomes read-only."""

    target: str = "/"

    def describe(self) -> str:
        return "make the root read-only"

    def execute(self, root: Path) -> None:
        remount_read_only(root, "/")
