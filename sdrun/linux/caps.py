"""Linux capabilities: names, the default set, and dropping to a set with capset(2).

A container keeps a small set of capabilities (podman's default eleven: Docker's
fourteen without NET_RAW, MKNOD and AUDIT_WRITE); the rest leave the bounding
set, so neither exec nor a setuid binary can bring them back. The ambient set is
cleared so nothing is handed on implicitly.
"""

from __future__ import annotations

import ctypes

from sdrun.errors import SpecError
from sdrun.linux import syscalls as sc

# Not typing's: the in-unit entries import this module, and typing costs them ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Index = capability number, as in <linux/capability.h>.
CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}
# net.ipv4.ping_group_range of a pod's network namespace: every gid may open ICMP echo sockets, as
# in Docker and podman, so that ping needs no NET_RAW (below); the kernel writes those headers.
ICMP_SOCKET_GROUPS = "0 2147483647"

# Left out of Docker's set, as podman does (`--cap-add` brings each back):
# - NET_RAW: raw and packet sockets forge frames to the other pods on a bridge (ARP, router
#   advertisements, spoofed sources); ping needs none where ping_group_range allows ICMP sockets;
# - MKNOD: DevicePolicy= stops a pod from opening a node it made, but not the host, which can
#   meet one in a volume;
# - AUDIT_WRITE: the audit log is the host's, not namespaced: a pod would write records into it.
DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
    }
)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def normalize(name: str) -> str:
    """'cap_net_admin', 'NET_ADMIN' and 'CAP_NET_ADMIN' all name NET_ADMIN; 'all' is ALL."""
    upper = name.strip().upper().removeprefix("CAP_")
    if upper != "ALL" and upper not in NUMBERS:
        raise SpecError(f"unknown capability '{name}'", hint="names as in capabilities(7), e.g. NET_ADMIN")
    return upper


def resolve(add: Iterable[str] = (), drop: Iterable[str] = ()) -> frozenset[str]:
    """The default set with `drop` removed, then `add` added (as Docker: ALL in either means every one)."""
    added = {normalize(name) for name in add}
    dropped = {normalize(name) for name in drop}
    keep = set() if "ALL" in dropped else set(DEFAULT_CAPABILITIES) - dropped
    keep |= set(CAPABILITIES) if "ALL" in added else added - {"ALL"}
    return frozenset(keep)


def mask(names: Iterable[str]) -> int:
    return sum(1 << NUMBERS[name] for name in names)


def last_capability() -> int:
    """The highest capability this kernel knows: newer ones than CAPABILITIES must go too."""
    with open("/proc/sys/kernel/cap_last_cap") as stream:
        return int(stream.read())


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def limit_bounding_set(keep: int) -> None:
    """Drop every capability not in the mask `keep` from the bounding set, and clear the ambient
    set (needs SETPCAP)."""
    for number in range(last_capability() + 1):
        if not keep & (1 << number):
            sc.prctl(sc.PR_CAPBSET_DROP, number)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)


def set_capabilities(value: int, inheritable: int | None = None) -> None:
    """capset(2): effective and permitted become exactly the mask `value`, and inheritable too
    unless given (sdrun-oci's config.json says it: podman's is empty)."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    low, high = value & 0xFFFFFFFF, value >> 32
    kept = value if inheritable is None else inheritable
    kept_low, kept_high = kept & 0xFFFFFFFF, kept >> 32
    data = (_Data * 2)(_Data(low, low, kept_low), _Data(high, high, kept_high))
    sc.capset(ctypes.addressof(header), ctypes.addressof(data))
