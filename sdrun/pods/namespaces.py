"""A pod's IPC and UTS namespaces (and for --net none its network one), held by bind-mounted files.

As `ip netns add` holds a network namespace: a short-lived child unshares the namespaces, sets
the hostname, brings up loopback in a network namespace of its own, binds each of its
/proc/self/ns/KIND on a file of /run/sdrun/pods/<uuid>/ and exits; the files keep the namespaces
alive with no process. The directory is a shared mount (as iproute2 makes /run/netns), so the
files show in every mount namespace that propagates from this one. Removal unmounts them; the
kernel frees a namespace when no app is left in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import struct
from pathlib import Path

from sdrun.errors import SdrunError
from sdrun.linux import syscalls as sc
from sdrun.pods import NAMESPACES_DIR, namespaces_dir

KINDS = {"ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS, "net": sc.CLONE_NEWNET}
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


OWNER = "root"  # in a pod's namespaces directory: the sdrun root whose pod it is, written first


def hold(root: Path, pod_uuid: str, hostname: str, *, own_network: bool) -> dict[str, str]:
    """Make and hold the pod's namespaces; their files, by kind. On failure nothing is left."""
    _share_dir()
    directory = namespaces_dir(pod_uuid)
    directory.mkdir(mode=0o755, exist_ok=True)
    (directory / OWNER).write_text(f"{root}\n")  # before any mount: gc tells whose they are
    kinds = ["ipc", "uts", *(["net"] if own_network else [])]
    for kind in kinds:
        os.close(os.open(directory / kind, os.O_RDONLY | os.O_CREAT, 0))
    child = os.fork()
    if child == 0:
        _child(directory, hostname, kinds)
    _, status = os.waitpid(child, 0)
    if status != 0:
        release(pod_uuid)
        raise SdrunError(f"could not make the pod's namespaces (status {os.waitstatus_to_exitcode(status)})")
    return {kind: str(directory / kind) for kind in kinds}


def _child(directory: Path, hostname: str, kinds: list[str]) -> None:
    try:
        flags = 0
        for kind in kinds:
            flags |= KINDS[kind]
        sc.unshare(flags)
        sc.sethostname(hostname)
        if "net" in kinds:
            _bring_up_loopback()
        for kind in kinds:
            sc.mount(f"/proc/self/ns/{kind}", directory / kind, None, sc.MS_BIND)
    except BaseException as error:  # noqa: BLE001 - a forked child: report and leave
        os.write(2, f"sdrun: pod namespaces: {error}\n".encode())
        os._exit(1)
    os._exit(0)


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(probe, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def release(pod_uuid: str) -> bool:
    """Unmount and remove the pod's namespace files; True if there were any."""
    directory = namespaces_dir(pod_uuid)
    if not directory.exists():
        return False
    for kind in KINDS:
        with contextlib.suppress(OSError):
            sc.umount2(str(directory / kind), sc.MNT_DETACH)
    shutil.rmtree(directory, ignore_errors=True)
    return True


def held(root: Path) -> list[str]:
    """The UUIDs of root's pods whose namespace files exist (a directory whose owner is not
    written yet is its creator's, at work or killed: only then, for lack of a better, root's)."""
    held = []
    try:
        entries = list(os.scandir(NAMESPACES_DIR))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            owner = Path(entry.path, OWNER).read_text().strip()
        except FileNotFoundError:
            owner = str(root)
        except OSError:
            continue
        if owner == str(root):
            held.append(entry.name)
    return held


def _share_dir() -> None:
    NAMESPACES_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        sc.mount(None, NAMESPACES_DIR, None, sc.MS_SHARED | sc.MS_REC)
    except OSError:  # not a mount point yet: bind it onto itself first (as iproute2 does /run/netns)
        sc.mount(NAMESPACES_DIR, NAMESPACES_DIR, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, NAMESPACES_DIR, None, sc.MS_SHARED | sc.MS_REC)
