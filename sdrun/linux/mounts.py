"""Mount plans as data: small operations that describe themselves, then execute.

Targets are paths inside a container root. Each is opened with
openat2(RESOLVE_IN_ROOT) and the mount lands on /proc/self/fd/N, so a symlink
in the image (a volume target pointing at `/`, say) cannot redirect it onto
the host.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdrun.linux import syscalls as sc
from sdrun.linux.rootfs import open_in_root

log = logging.getLogger("sdrun.mounts")


def make_mount_point(root: Path, target: str, directory: bool) -> None:
    """Create target (and its parents) inside root unless present; never follows a link out of root."""
    parts = [part for part in target.split("/") if part]
    for depth, part in enumerate(parts, start=1):
        path = "/" + "/".join(parts[:depth])
        last = depth == len(parts)
        try:
            with open_in_root(root, path, os.O_PATH):
                continue
        except FileNotFoundError:
            pass
        with open_in_root(root, "/" + "/".join(parts[: depth - 1]), os.O_PATH | os.O_DIRECTORY) as parent:
            if directory or not last:
                os.mkdir(part, 0o755, dir_fd=parent)
            else:
                os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=parent))


def mount_in_root(
    source: str | None, root: Path, target: str, fstype: str | None, flags: int, options: str | None
) -> None:
    with open_in_root(root, target, os.O_PATH) as fd:
        sc.mount(source, f"/proc/self/fd/{fd}", fstype, flags, options)


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
        make_mount_point(root, self.target, directory=os.path.isdir(self.source))
        mount_in_root(self.source, root, self.target, None, sc.MS_BIND | sc.MS_REC, None)
        if self.read_only:
            # A bind mount ignores MS_RDONLY on creation; remount the new mount (reopened) read-only.
            flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
            mount_in_root(None, root, self.target, None, flags, None)


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
        log.debug("%s", operation.describe())
        operation.execute(root)
