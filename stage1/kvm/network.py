"""The VM's NIC in the pod's network namespace: a tap that takes over the pod's interface.

When the networking setup made the pod a named network namespace (the path
sdrun.net.network_namespace() names), the entry joins it,
creates a tap there and redirects, with tc, everything that arrives on the
pod's interface to the tap and back (as Kata Containers does). The guest's NIC
gets the interface's MAC, address and default route, so whatever the host side
does for the pod's address (routes, NAT, published ports) reaches the guest
unchanged. qemu inherits the tap's file descriptor.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.linux import syscalls as sc

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
TAP_NAME = "sdrun-tap0"
FIRST_FREE_FD = 10


class GuestNetwork(NamedTuple):
    tap_fd: int
    mac: str
    address: str  # ADDRESS/PREFIX
    gateway: str  # "" when the namespace has no default route

    def qemu_arguments(self) -> list[str]:
        return [
            "-netdev",
            f"tap,id=net0,fd={self.tap_fd}",
            "-device",
            f"virtio-net-pci,netdev=net0,mac={self.mac}",
        ]


def join_and_attach(netns: Path) -> GuestNetwork:
    """Join netns (for good: qemu runs there too) and hand its interface over to a tap."""
    sc.setns_path(netns, sc.CLONE_NEWNET)
    interface = pod_interface()
    address = next(item for item in interface["addr_info"] if item["family"] == "inet")
    tap_fd = create_tap(TAP_NAME)
    ip("link", "set", TAP_NAME, "mtu", str(interface["mtu"]), "up")
    redirect(interface["ifname"], TAP_NAME)
    redirect(TAP_NAME, interface["ifname"])
    return GuestNetwork(tap_fd, interface["address"], f"{address['local']}/{address['prefixlen']}", default_gateway())


def pod_interface() -> dict[str, Any]:
    """The namespace's one interface beside loopback that has an IPv4 address."""
    links: list[dict[str, Any]] = json.loads(ip("-j", "address", "show"))
    candidates = [
        link
        for link in links
        if link["ifname"] != "lo" and any(item["family"] == "inet" for item in link.get("addr_info", []))
    ]
    if len(candidates) != 1:
        names = ", ".join(link["ifname"] for link in candidates) or "none"
        raise SdrunError(f"the pod's network namespace needs exactly one interface with an IPv4 address ({names})")
    return candidates[0]


def default_gateway() -> str:
    routes: list[dict[str, Any]] = json.loads(ip("-j", "-4", "route", "show", "default"))
    return str(routes[0].get("gateway", "")) if routes else ""


def create_tap(name: str) -> int:
    """A tap device; the returned descriptor is what qemu reads and writes frames on."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    request = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI)
    try:
        fcntl.ioctl(fd, TUNSETIFF, request)
        # Inheritable, so that qemu gets it across exec, and above the descriptors vm.sh uses.
        return fcntl.fcntl(fd, fcntl.F_DUPFD, FIRST_FREE_FD)
    except OSError as error:
        raise SdrunError(f"cannot create the VM's tap device: {error.strerror}") from None
    finally:
        os.close(fd)


def redirect(source: str, target: str) -> None:
    """Every frame that arrives on source leaves on target (tc ingress + mirred)."""
    # A restarted pod finds its previous start's filter, which points at a tap gone with that qemu.
    subprocess.run(["tc", "qdisc", "del", "dev", source, "ingress"], capture_output=True, check=False)
    run(["tc", "qdisc", "add", "dev", source, "ingress"])
    action = ["action", "mirred", "egress", "redirect", "dev", target]
    filter_command = ["tc", "filter", "add", "dev", source, "parent", "ffff:", "protocol", "all"]
    run([*filter_command, "u32", "match", "u8", "0", "0", *action])


def ip(*args: str) -> str:
    return run(["ip", *args])


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SdrunError(f"{' '.join(command[:3])}: {result.stderr.strip() or 'failed'}")
    return result.stdout
