"""Netlink, through pyroute2's message classes: bridges, veth pairs and named network namespaces.

The one module of sdrun that imports pyroute2. A pod's set-up is a handful of
rtnetlink requests, each acknowledged by the kernel: pyroute2 encodes them, and
they go over a plain blocking socket (as sdrun.systemd.bus does with dbus-next's
message layer). IPRoute, with the asyncio core it runs on, would cost every
set-up ~60 ms more of imports; the message classes cost ~20 ms. Only the set-up
and tear-down of a pod on a network import this module, and only when there is
netlink work to do. Interfaces are looked up by name with if_nametoindex(3).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdrun.imports import skip_package_init

skip_package_init("pyroute2")  # its __init__ imports NDB, IPRoute, conntrack... that sdrun never uses
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR  # noqa: E402
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE  # noqa: E402
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

from sdrun.errors import SdrunError, describe  # noqa: E402
from sdrun.linux import caps  # noqa: E402
from sdrun.linux import syscalls as sc  # noqa: E402
from sdrun.net import NETNS_DIR, peer_mac  # noqa: E402
from sdrun.net.config import Network  # noqa: E402
from sdrun.paths import netns_path  # noqa: E402

POD_INTERFACE = "eth0"
ENODEV = 19
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id
NLMSG_ERROR_CODE = struct.Struct("=i")  # after the header: 0 (an acknowledgement) or -errno
RECEIVE_BUFFER = 65536
CREATE = NLM_F_CREATE | NLM_F_EXCL
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFA_F_NODAD = 0x02  # usable at once: the address is the pod's own by its lease, no duplicate to detect


class Netlink:
    """A route netlink socket in the network namespace of the thread that opened it. Each
    request waits for the kernel's acknowledgement; a refusal raises OSError (errno, the
    request's name and the interface it was about)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._sequence = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def request(self, message: Any, kind: int, what: str, interface: str, flags: int = 0) -> None:
        self._sequence += 1
        header = message["header"]
        header["type"], header["flags"] = kind, NLM_F_REQUEST | NLM_F_ACK | flags
        header["sequence_number"] = self._sequence
        message.encode()
        self.sock.send(message.data)
        error = self._acknowledgement(self._sequence)
        if error:
            raise OSError(error, f"{what}: {os.strerror(error)}", interface)

    def _acknowledgement(self, sequence: int) -> int:
        """The errno of the request's acknowledgement (0: done). The socket is in no multicast
        group, so all it receives are the answers to our own requests."""
        while True:
            data = self.sock.recv(RECEIVE_BUFFER)
            offset = 0
            while offset + NLMSG_HEADER.size <= len(data):
                length, kind, _, number, _ = NLMSG_HEADER.unpack_from(data, offset)
                if kind == NLMSG_ERROR and number == sequence:
                    return -int(NLMSG_ERROR_CODE.unpack_from(data, offset + NLMSG_HEADER.size)[0])
                offset += (length + 3) & ~3 or len(data)  # messages are 4-aligned; a zero length ends the batch

    def create_link(self, name: str, kind: str, info_data: dict[str, Any] | None = None, mac: str = "") -> None:
        info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
        if info_data is not None:
            info.append(("IFLA_INFO_DATA", info_data))
        message = ifinfmsg()
        message["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})]
        if mac:
            message["attrs"].append(("IFLA_ADDRESS", mac))
        self.request(message, RTM_NEWLINK, f"create {kind}", name, CREATE)

    def set_link(self, name: str, *, up: bool = False, **attributes: Any) -> None:
        """Change an interface: bring it up, and set IFLA_<KEY> attributes (master=, ifalias=)."""
        message = ifinfmsg()
        message["index"] = interface_index(name)
        if up:
            message["flags"] = message["change"] = IFF_UP
        message["attrs"] = [(f"IFLA_{key.upper()}", value) for key, value in attributes.items()]
        self.request(message, RTM_NEWLINK, "change interface", name)

    def delete_link(self, name: str) -> None:
        message = ifinfmsg()
        message["attrs"] = [("IFLA_IFNAME", name)]
        self.request(message, RTM_DELLINK, "delete interface", name)

    def add_address(self, name: str, address: str, prefixlen: int) -> None:
        message = ifaddrmsg()
        message["family"], message["prefixlen"], message["index"] = socket.AF_INET, prefixlen, interface_index(name)
        message["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        self.request(message, RTM_NEWADDR, "add address", name, CREATE)

    def add_default_route(self, name: str, gateway: str) -> None:
        message = rtmsg()
        message["family"], message["table"], message["proto"] = socket.AF_INET, RT_TABLE_MAIN, RTPROT_BOOT
        message["scope"], message["type"] = RT_SCOPE_UNIVERSE, RTN_UNICAST
        message["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", interface_index(name))]
        self.request(message, RTM_NEWROUTE, "add default route", name, CREATE)

    def add_address6(self, name: str, address: str, prefixlen: int) -> None:
        message = ifaddrmsg()
        message["family"], message["prefixlen"], message["index"] = socket.AF_INET6, prefixlen, interface_index(name)
        message["flags"] = IFA_F_NODAD
        message["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address), ("IFA_FLAGS", IFA_F_NODAD)]
        self.request(message, RTM_NEWADDR, "add IPv6 address", name, CREATE)

    def add_default_route6(self, name: str, gateway: str) -> None:
        message = rtmsg()
        message["family"], message["table"], message["proto"] = socket.AF_INET6, RT_TABLE_MAIN, RTPROT_BOOT
        message["scope"], message["type"] = RT_SCOPE_UNIVERSE, RTN_UNICAST
        message["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", interface_index(name))]
        self.request(message, RTM_NEWROUTE, "add IPv6 default route", name, CREATE)


def interface_index(name: str) -> int:
    """The index of an interface of the calling thread's network namespace."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise SdrunError(f"interface {name} is missing") from None


def sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ensure_bridge(network: Network) -> None:
    """The network's bridge, up, with the gateway address; created if missing."""
    with Netlink() as netlink:
        if not link_exists(network.bridge):
            with contextlib.suppress(FileExistsError):  # made since we looked, by a racing root
                netlink.create_link(network.bridge, "bridge", mac=random_mac())
        with contextlib.suppress(FileExistsError):  # the address is there already
            netlink.add_address(network.bridge, network.gateway, network.prefixlen)
        netlink.set_link(network.bridge, up=True)
    # Port forwarding from 127.0.0.1 sends packets with a loopback source into the bridge: allowed on it alone.
    # What a pod sends to or from 127.0.0.0/8 is dropped before routing (sdrun.net.nft, from_bridges).
    sysctl(f"net/ipv4/conf/{network.bridge}/route_localnet", "1")
    refuse_router_advertisements(network.bridge)  # the host takes no route from a pod either
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        sysctl("net/ipv4/ip_forward", "1")  # outbound NAT and published ports reached from other hosts route


def ensure_bridge_ipv6(network: Network) -> None:
    """The IPv6 side of a network with IPv6 (after ensure_bridge): the bridge's ::1 of the subnet,
    and IPv6 forwarding on. Forwarding on `all` makes the kernel ignore router advertisements on
    every interface whose accept_ra is 1, as Docker's and podman's IPv6 networks do too
    (docs/networking.md, "IPv6")."""
    with Netlink() as netlink, contextlib.suppress(FileExistsError):
        netlink.add_address6(network.bridge, network.gateway6, _prefixlen6(network))
    if Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() != "1":
        sysctl("net/ipv6/conf/all/forwarding", "1")


def configure_pod_ipv6(network: Network, netns_name: str, address6: str) -> None:
    """A pod's IPv6 address and default route through the bridge, in its namespace (after
    create_pod_interface). Its link-local address is the EUI-64 one (addr_gen_mode 0), which
    the pod's source filter allows (sdrun.net.nft.link_local)."""
    with _netlink_in(NETNS_DIR / netns_name) as inside:
        mode = f"net/ipv6/conf/{POD_INTERFACE}/addr_gen_mode"
        if Path("/proc/sys", mode).read_text().strip() != "0":
            sysctl(mode, "0")
        inside.add_address6(POD_INTERFACE, address6, _prefixlen6(network))
        inside.add_default_route6(POD_INTERFACE, network.gateway6)


def _prefixlen6(network: Network) -> int:
    return int(network.subnet6.partition("/")[2])


def random_mac() -> str:
    """A locally administered unicast MAC. A bridge given one keeps it; one without takes the lowest
    of its ports' as they come and go, and each change flushes the host's neighbour entries on it
    and leaves pods' ARP caches with a gateway MAC that no longer answers."""
    return ":".join(["02", *(f"{byte:02x}" for byte in os.urandom(5))])


def create_pod_interface(network: Network, netns_name: str, veth: str, address: str, tag: str) -> None:
    """A named network namespace whose eth0 (with the MAC peer_mac(veth)) is one end of a veth pair;
    the other end, veth, is a port of the bridge, with `tag` as its alias so that gc can tell whose it is."""
    namespace = create_netns(netns_name)
    namespace_fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer = {
            "attrs": [
                ("IFLA_IFNAME", POD_INTERFACE),
                ("IFLA_ADDRESS", peer_mac(veth)),
                ("IFLA_NET_NS_FD", namespace_fd),
            ]
        }
        with Netlink() as netlink:
            netlink.create_link(veth, "veth", {"attrs": [("VETH_INFO_PEER", peer)]})
            netlink.set_link(veth, ifalias=tag)
            netlink.set_link(veth, up=True, master=interface_index(network.bridge))
    finally:
        os.close(namespace_fd)
    with _netlink_in(namespace) as inside:
        refuse_router_advertisements("all", "default", POD_INTERFACE)
        sysctl("net/ipv4/ping_group_range", caps.ICMP_SOCKET_GROUPS)  # ping without NET_RAW
        inside.add_address(POD_INTERFACE, address, network.prefixlen)
        inside.set_link(POD_INTERFACE, up=True)
        inside.set_link("lo", up=True)
        inside.add_default_route(POD_INTERFACE, network.gateway)


def refuse_router_advertisements(*interfaces: str) -> None:
    """No IPv6 address or route from a router advertisement on interfaces, in the calling thread's
    network namespace (/proc/sys/net is the opener's). The bridge drops IPv6 from pods already; this
    keeps an interface from taking any that reaches it some other way. No IPv6 at all: nothing to do."""
    if not Path("/proc/sys/net/ipv6").exists():
        return
    for interface in interfaces:
        for setting in ("accept_ra", "autoconf"):
            sysctl(f"net/ipv6/conf/{interface}/{setting}", "0")


def create_netns(name: str) -> Path:
    """A named network namespace, as `ip netns add` makes one: a new namespace bound on a file in
    /run/netns, a shared mount so that the name shows in every mount namespace. Made by this
    thread and left again, with no helper process."""
    _share_netns_dir()
    path = netns_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        with _original_netns():
            sc.unshare(sc.CLONE_NEWNET)
            sc.mount("/proc/thread-self/ns/net", path, None, sc.MS_BIND)
    except BaseException:
        path.unlink()
        raise
    return path


def _share_netns_dir() -> None:
    NETNS_DIR.mkdir(mode=0o755, exist_ok=True)
    try:
        sc.mount(None, NETNS_DIR, None, sc.MS_SHARED | sc.MS_REC)
    except OSError:  # not a mount point yet: bind it onto itself first (as iproute2 does)
        sc.mount(NETNS_DIR, NETNS_DIR, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, NETNS_DIR, None, sc.MS_SHARED | sc.MS_REC)


@contextlib.contextmanager
def _original_netns() -> Iterator[None]:
    """Whatever the block does to this thread's network namespace, it is back in its own after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield
    finally:
        try:
            sc.setns(own, sc.CLONE_NEWNET)
        finally:
            os.close(own)


@contextlib.contextmanager
def _netlink_in(namespace: Path) -> Iterator[Netlink]:
    """Requests carried out inside the namespace. A netlink socket belongs to the namespace it
    was opened in, and if_nametoindex looks in the thread's own: the thread stays inside."""
    with _original_netns():
        sc.setns_path(namespace, sc.CLONE_NEWNET)
        with Netlink() as netlink:
            yield netlink


def delete_link(name: str) -> None:
    """Delete an interface (a veth takes its peer along); gone already is fine."""
    if not link_exists(name):
        return
    with Netlink() as netlink:
        try:
            netlink.delete_link(name)
        except OSError as error:
            if error.errno != ENODEV:
                raise SdrunError(describe(error)) from None  # "delete interface: <reason>: <name>"
