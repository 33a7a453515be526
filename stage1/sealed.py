"""The sealed interpreter: the processes that end in an exec inside a pod run Python from a
read-only view of its prefix, never from the host's own files.

Until its execve() the namespace stage1's container init (a fork of the unit's entry) and the
`sdrun enter` child are the interpreter that runs sdrun. A pod whose app is a script starting
`#!/proc/self/exe` makes the kernel run that binary inside the pod, where the image's dynamic
loader and libraries take over, and a descriptor of /proc/self/exe reopened for writing once no
host process runs the file (ETXTBSY until then) would change the host's interpreter for the
next sdrun command (the CVE-2019-5736 pattern). So those processes run the binary of an
overlayfs over the interpreter's prefix with lower layers only: such a superblock is read-only
for good (no remount makes it writable, whatever the caller's privileges), and /proc/self/exe
of a process started from it names the overlay's file, which nothing opens for writing (EROFS).

The view is mounted once per interpreter prefix, on the host at
sdrun.paths.sealed_interpreter(key), by the first sdrun command that needs it, and stays there
(like /run/netns): units carry its path in ExecStart=, and a unit that systemd restarts, or an
installed one, starts from it again. Python finds its standard library inside the same view.

    executable()              the view's interpreter, for a unit's ExecStart= (nothing mounted)
    ensure()                  mount the view if it is absent or stale; return executable()
    exec_python(entry, args)  become the view's interpreter running `entry(args)` (enter, --scope)
"""

from __future__ import annotations

import fcntl
import functools
import os
import sys
import zlib  # imported on `sdrun run`'s path already: hashlib would cost it ~2 ms
from pathlib import Path
from typing import NamedTuple, NoReturn

import stage1
from sdrun.errors import SdrunError
from sdrun.linux import syscalls as sc
from sdrun.paths import SEALED_EMPTY_LAYER, SEALED_INTERPRETERS, SEALED_LOCK, sealed_interpreter

OVERLAYFS_SUPER_MAGIC = 0x794C7630
MOUNT_SOURCE = "sdrun-python"  # what the host's mount table shows as the views' source
# A stage0 process re-executed from the view: -I leaves the caller's PYTHON* variables and
# directories off (the code that joins a pod is sdrun's), -S skips site (see entry_command).
PROGRAM = "import sys; sys.path.insert(0, {directory!r}); from {module} import {function}; {function}(sys.argv[1:])"


class Interpreter(NamedTuple):
    binary: str  # the interpreter that runs sdrun, links resolved
    prefix: str  # its prefix (sys.base_prefix: a virtualenv's is the interpreter's own), resolved
    view: Path  # where the sealed view of prefix is mounted

    @property
    def executable(self) -> str:
        return str(self.view / os.path.relpath(self.binary, self.prefix))


@functools.cache  # realpath() of both is most of a start's cost of the seal (~0.1 ms)
def interpreter() -> Interpreter:
    binary, prefix = os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)
    if os.path.commonpath([binary, prefix]) != prefix:
        raise SdrunError(
            f"the interpreter {binary} is not inside its prefix {prefix}: no sealed view of it can be made",
            hint="install sdrun with a Python whose binary lives under its prefix (bin/python3)",
        )
    return Interpreter(binary, prefix, sealed_interpreter(prefix_key(prefix)))


def prefix_key(prefix: str) -> str:
    """The name of a prefix's view: its path with / as - (readable; the end of it, if long), and its
    CRC-32 (one name per path). Only characters that need no quoting anywhere: units carry it."""
    readable = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in prefix.strip("/"))
    return f"{readable[-200:]}-{zlib.crc32(os.fsencode(prefix)):08x}"


def executable() -> str:
    return interpreter().executable


def ensure() -> str:
    """The sealed interpreter's path, its view mounted first if it is absent, or stale (the prefix's
    interpreter replaced since, by an upgrade). Two sdrun commands at once mount it once."""
    sealed = interpreter()
    if is_current(sealed):
        return sealed.executable
    SEALED_INTERPRETERS.mkdir(mode=0o755, parents=True, exist_ok=True)
    lock = os.open(SEALED_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(sealed):  # nobody mounted it while we waited
            _mount(sealed)
    finally:
        os.close(lock)
    if not is_current(sealed):
        raise SdrunError(f"the sealed interpreter {sealed.executable} is not the one sdrun runs ({sealed.binary})")
    return sealed.executable


def is_current(sealed: Interpreter) -> bool:
    """Is the view mounted, a read-only overlayfs, with the interpreter of today in it?"""
    try:
        fd = os.open(sealed.executable, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        seen, real = os.fstat(fd), os.stat(sealed.binary)
        return (
            sc.filesystem_type(fd) == OVERLAYFS_SUPER_MAGIC
            and bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)
            and (seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)
            == (real.st_ino, real.st_size, real.st_mtime_ns, real.st_ctime_ns)
        )
    finally:
        os.close(fd)


def _mount(sealed: Interpreter) -> None:
    """An overlayfs of the prefix with no upper layer: overlayfs then wants a second lower one, an
    empty directory. A view left stale is detached first: a unit started from it keeps it."""
    from stage1.rootfs import overlay_options

    SEALED_EMPTY_LAYER.mkdir(mode=0o555, exist_ok=True)
    sealed.view.mkdir(mode=0o755, exist_ok=True)
    while os.path.ismount(sealed.view):
        sc.umount2(sealed.view, sc.MNT_DETACH)
    options = overlay_options([sealed.prefix, str(SEALED_EMPTY_LAYER)])
    try:
        sc.mount(MOUNT_SOURCE, sealed.view, "overlay", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV, options)
    except OSError as error:
        raise SdrunError(
            f"cannot mount the sealed interpreter at {sealed.view}: {error.strerror}",
            hint="sdrun runs pods as root, and needs overlayfs",
        ) from error


def exec_python(entry: str, args: list[str]) -> NoReturn:
    """Become the sealed interpreter running ENTRY (`package.module.function`) with args: the rest
    of a stage0 process that is about to join or create a pod (`sdrun enter`, `run --scope`)."""
    module, function = entry.rsplit(".", 1)
    directory = os.path.dirname(os.path.dirname(os.path.abspath(stage1.__file__)))  # holds sdrun and stage1
    path = ensure()
    program = PROGRAM.format(directory=directory, module=module, function=function)
    os.execv(path, [path, "-I", "-S", "-c", program, *args])
