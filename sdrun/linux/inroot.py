"""Mounting and looking up paths inside a container's root, never leaving it.

Every lookup goes through openat2(RESOLVE_IN_ROOT): an absolute symlink in the
image such as /etc -> /host/etc resolves inside the root, never on the host.
Mounts land on /proc/self/fd/N of such a lookup, so no symlink can redirect
them either. This module stays light (no pathlib, dataclasses or contextlib): the stage1
entries import it inside every unit.
"""

from __future__ import annotations

import os

from sdrun.errors import SdrunError
from sdrun.linux import syscalls as sc

StrPath = str | os.PathLike[str]


class open_in_root:
    """`with open_in_root(root, path) as fd`: an fd for path looked up inside root, as if root were
    `/`, closed afterwards. A class rather than a contextlib.contextmanager: contextlib (and the
    collections it imports) would cost every container start its import."""

    def __init__(self, root: StrPath, path: str, flags: int = os.O_RDONLY) -> None:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = sc.openat2(root_fd, path, flags, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
        finally:
            os.close(root_fd)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


MAX_SYMLINK_HOPS = 40  # as the kernel's own limit (ELOOP)


def make_mount_point(root: StrPath, target: str, directory: bool) -> None:
    """Create target (and its parents) inside root unless present; never follows a link out of root.

    A dangling symlink on the way (an image's /etc/resolv.conf -> ../run/resolved/stub.conf,
    /dev -> /host/dev) is followed inside root, as the kernel would with root as `/`, and what
    it names is created there."""
    path, hops = target, 0
    while True:
        try:
            with open_in_root(root, path, os.O_PATH):
                return
        except FileNotFoundError:
            pass
        parent, _, name = path.rstrip("/").rpartition("/")
        parent = parent or "/"
        make_mount_point(root, parent, directory=True)
        if name in ("", ".", ".."):  # names the parent or its parent, which exist now
            return
        with open_in_root(root, parent, os.O_PATH | os.O_DIRECTORY) as parent_fd:
            try:
                if directory:
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
                else:
                    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
                    os.close(os.open(name, flags, 0o644, dir_fd=parent_fd))
                return
            except FileExistsError:  # a dangling symlink: create what it names, inside root
                link = os.readlink(name, dir_fd=parent_fd)
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise SdrunError(f"cannot mount on '{target}': too many levels of symlinks in the image")
        # Relative to the link's directory; `..` above root stays at root (RESOLVE_IN_ROOT).
        path = link if link.startswith("/") else f"{parent.rstrip('/')}/{link}"


# What the kernel shows a container through /proc and /sys, masked and read-only where it must be:
# nothing may be mounted over a part of it (a volume over /proc/sys/kernel would fake cap_last_cap).
KERNEL_FILESYSTEMS = (sc.PROC_SUPER_MAGIC, sc.SYSFS_MAGIC)


def mount_in_root(
    source: str | None, root: StrPath, target: str, fstype: str | None, flags: int, options: str | None
) -> None:
    with open_in_root(root, target, os.O_PATH) as fd:
        if os.path.samestat(os.fstat(fd), os.stat(root)):  # `/`, `//`, or a link in the image to either
            raise SdrunError(f"mount target '{target}' resolves to the container's root")
        if sc.filesystem_type(fd) in KERNEL_FILESYSTEMS:  # a link in the image to /proc/sys, say
            raise SdrunError(f"mount target '{target}' resolves into the container's /proc or /sys")
        try:
            sc.mount(source, f"/proc/self/fd/{fd}", fstype, flags, options)
        except OSError as error:  # name the container's path, not /proc/self/fd/N
            what = fstype or f"bind of {source}"
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise OSError(error.errno, f"mount {what} on {target}: {reason}") from None


# Per-mount flags that a read-only remount must repeat: in a user namespace the
# kernel refuses to clear ones the mount was created (and locked) with.
KEPT_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME


def remount_read_only(root: StrPath, target: str) -> None:
    """Make the mount at target (in root) read-only, keeping its other flags."""
    with open_in_root(root, target, os.O_PATH) as fd:
        path = f"/proc/self/fd/{fd}"
        kept = os.statvfs(path).f_flag & KEPT_FLAGS
        sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | kept)


def exists_in_root(root: StrPath, target: str) -> bool:
    try:
        with open_in_root(root, target, os.O_PATH):
            return True
    except FileNotFoundError:
        return False


def make_tree_read_only(root: StrPath, target: str) -> None:
    """Make the mount at target (in root) and every mount below it read-only."""
    with open_in_root(root, target, os.O_PATH) as fd:
        sc.make_tree_read_only(fd)


def bind_in_root(source: str, root: StrPath, target: str, read_only: bool = False) -> None:
    """Bind source (recursively) at target inside root, creating the mount point if needed. Read-only,
    the mounts that came along under source are read-only too (the host's /sys/fs/cgroup/* under /sys)."""
    make_mount_point(root, target, directory=os.path.isdir(source))
    mount_in_root(source, root, target, None, sc.MS_BIND | sc.MS_REC, None)
    if read_only:
        # A bind mount ignores MS_RDONLY on creation: set it on the new mounts (reopened).
        make_tree_read_only(root, target)
