"""Checked ctypes wrappers around the Linux syscalls Python 3.11 does not expose.

One wrapper per syscall. Each raises OSError carrying errno and the object it
acted on, so a failure reads like `mount: /pods/x/rootfs: Permission denied`.
"""

from __future__ import annotations

import ctypes
import os

from sdrun.errors import SdrunError

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000

MNT_DETACH = 0x2

PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# The syscalls libc has no wrapper for, called by number: per machine as uname(2) names it
# (platform.machine()'s value, without importing platform), from the kernel's tables: x86-64's own
# (arch/x86/entry/syscalls/syscall_64.tbl), arm64's the generic one (include/uapi/asm-generic/unistd.h).
# From 5.1's (424) on, every architecture gives a new syscall the same number.
SYSCALL_NUMBERS = {
    "x86_64": {"pivot_root": 155, "open_tree": 428, "move_mount": 429, "openat2": 437, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "open_tree": 428, "move_mount": 429, "openat2": 437, "mount_setattr": 442},
}
MACHINE = os.uname().machine


def syscall_number(name: str, machine: str = MACHINE) -> int:
    """The number of a syscall libc has no wrapper for, on this machine; SdrunError on a machine
    sdrun has no table for (a wrong number would call another syscall)."""
    try:
        return SYSCALL_NUMBERS[machine][name]
    except KeyError:
        known = ", ".join(SYSCALL_NUMBERS)
        raise SdrunError(
            f"sdrun knows no syscall number of {name} on machine '{machine}'", hint=f"known: {known}"
        ) from None


# dlopen(NULL): the C library the interpreter is linked with. ctypes.util.find_library
# would import subprocess and tempfile, ~20 ms on every start of sdrun and of a stage1.
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, operation: str, target: str | os.PathLike[str] | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{operation}: {os.strerror(err)}", None if target is None else os.fspath(target))
    return result


def _encode(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    options: str | None = None,
) -> None:
    _check(
        _libc.mount(_encode(source), _encode(target), _encode(fstype), ctypes.c_ulong(flags), _encode(options)),
        "mount",
        target,
    )


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_encode(target), ctypes.c_int(flags)), "umount2", target)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def setns_path(path: str | os.PathLike[str], nstype: int) -> None:
    """Join the namespace a file names (/run/netns/NAME, /proc/PID/ns/net...)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype)
    finally:
        os.close(fd)


def syncfs(fd: int) -> None:
    """syncfs(2): write out the whole filesystem fd is on (one call for a tree of many files)."""
    _check(_libc.syncfs(ctypes.c_int(fd)), "syncfs")


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    _check(_libc.syscall(syscall_number("pivot_root"), _encode(new_root), _encode(put_old)), "pivot_root", new_root)


PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
STATFS_SIZE = 120  # sizeof(struct statfs) on 64-bit Linux; f_type, a long, comes first


def filesystem_type(fd: int) -> int:
    """f_type of fstatfs(2): the magic number of the filesystem fd is on (os.statvfs has none)."""
    buffer = ctypes.create_string_buffer(STATFS_SIZE)
    _check(_libc.fstatfs(ctypes.c_int(fd), buffer), "fstatfs")
    return ctypes.c_long.from_buffer(buffer).value


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)
        ),
        "prctl",
    )


def setgroups(gids: list[int]) -> None:
    array = (ctypes.c_uint * len(gids))(*gids)
    _check(_libc.setgroups(ctypes.c_size_t(len(gids)), array), "setgroups")


class _Rlimit(ctypes.Structure):
    _fields_ = [("soft", ctypes.c_ulong), ("hard", ctypes.c_ulong)]


RLIM_INFINITY = -1  # as Python's resource module says it: (rlim_t) -1
# RLIMIT_* by number, as in <asm-generic/resource.h>, named as in Docker's --ulimit.
RLIMIT_NAMES = (
    "cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile",
    "memlock", "as", "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime",
)  # fmt: skip


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2) without the resource module, which a process that left the host's root could not
    import any more. -1 is RLIM_INFINITY."""
    limit = _Rlimit(soft & 0xFFFFFFFFFFFFFFFF, hard & 0xFFFFFFFFFFFFFFFF)
    shown = ":".join("unlimited" if value == RLIM_INFINITY else str(value) for value in (soft, hard))
    result = _libc.setrlimit(ctypes.c_int(resource), ctypes.byref(limit))
    _check(result, "setrlimit", f"{RLIMIT_NAMES[resource]}={shown}")


def capset(header: int, data: int) -> None:
    """capset(2) with the addresses of a filled __user_cap_header_struct and its two data structs."""
    _check(_libc.capset(ctypes.c_void_p(header), ctypes.c_void_p(data)), "capset")


def load_seccomp_filter(program: bytes) -> None:
    """Install a classic-BPF seccomp filter (8-byte sock_filter instructions); needs no_new_privs."""

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(instructions))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


OPEN_TREE_CLONE = 0x1
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_IDMAP = 0x00100000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_EMPTY_PATH = 0x1000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(path: str | os.PathLike[str], flags: int) -> int:
    return _check(
        _libc.syscall(
            syscall_number("open_tree"), ctypes.c_int(-100), _encode(path), ctypes.c_uint(flags | os.O_CLOEXEC)
        ),
        "open_tree",
        path,
    )


def _mount_setattr(fd: int, attr: _MountAttr, flags: int = 0) -> None:
    _check(
        _libc.syscall(
            syscall_number("mount_setattr"),
            ctypes.c_int(fd),
            b"",
            ctypes.c_uint(AT_EMPTY_PATH | flags),
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        ),
        "mount_setattr",
    )


def idmap_mount(fd: int, userns_fd: int, *, recursive: bool = False) -> None:
    """mount_setattr(2): make the detached mount fd (and the mounts under it, if recursive) show
    files through userns_fd's uid/gid maps."""
    _mount_setattr(fd, _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd), AT_RECURSIVE if recursive else 0)


def make_tree_read_only(fd: int) -> None:
    """mount_setattr(2): the mount at fd and every mount below it become read-only, their other flags kept
    (a remount would change the top one only)."""
    _mount_setattr(fd, _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0), AT_RECURSIVE)


def move_mount(fd: int, target: str | os.PathLike[str]) -> None:
    """Attach the detached mount fd at target."""
    _check(
        _libc.syscall(
            syscall_number("move_mount"),
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(-100),
            _encode(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        "move_mount",
        target,
    )


RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open path relative to dirfd under the given RESOLVE_* restrictions."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc.syscall(
            syscall_number("openat2"), ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        ),
        "openat2",
        path,
    )
