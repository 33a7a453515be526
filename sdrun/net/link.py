"""Netlink: bridges, veth pairs and named network namespaces.

A pod's set-up is a handful of rtnetlink requests, each acknowledged by the
kernel, encoded by sdrun.net.rtnl (sdrun imports no netlink library: pyroute2's
message classes cost every set-up ~17 ms of imports). Interfaces are looked up
by name with if_nametoindex(3).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from sdrun.errors import SdrunError, describe
from sdrun.linux import caps
from sdrun.linux import syscalls as sc
from sdrun.net import NETNS_DIR, peer_mac, rtnl
from sdrun.net.config import Network
from sdrun.net.rtnl import attribute, text, u32
from sdrun.paths import netns_path

POD_INTERFACE = "eth0"
ENODEV = 19


class Netlink(rtnl.Socket):
    """A route netlink socket in the network namespace of the thread that opened it. Each
    request waits for the kernel's acknowledgement; a refusal raises OSError (errno, the
    request's name and the interface it was about)."""

    def __enter__(self) -> Netlink:
        return self

    def create_link(self, name: str, kind: str, info_data: bytes = b"", mac: str = "") -> None:
        """A new interface of kind (bridge, veth); info_data: its kind's attributes (veth_peer())."""
        info = attribute(rtnl.IFLA_INFO_KIND, text(kind))
        if info_data:
            info += attribute(rtnl.IFLA_INFO_DATA, info_data)
        attributes = attribute(rtnl.IFLA_IFNAME, text(name)) + attribute(rtnl.IFLA_LINKINFO, info)
        if mac:
            attributes += attribute(rtnl.IFLA_ADDRESS, rtnl.mac_bytes(mac))
        self.request(rtnl.RTM_NEWLINK, rtnl.link_message(attributes=attributes), f"create {kind}", name, rtnl.CREATE)

    def set_link(self, name: str, *, up: bool = False, master: int | None = None, ifalias: str | None = None) -> None:
        """Change an interface: bring it up, put it on a bridge (master: its index), set its alias."""
        attributes = b""
        if master is not None:
            attributes += attribute(rtnl.IFLA_MASTER, u32(master))
        if ifalias is not None:
            attributes += attribute(rtnl.IFLA_IFALIAS, text(ifalias))
        flags = rtnl.IFF_UP if up else 0
        body = rtnl.link_message(interface_index(name), flags, flags, attributes)
        self.request(rtnl.RTM_NEWLINK, body, "change interface", name)

    def delete_link(self, name: str) -> None:
        body = rtnl.link_message(attributes=attribute(rtnl.IFLA_IFNAME, text(name)))
        self.request(rtnl.RTM_DELLINK, body, "delete interface", name)

    def add_address(self, name: str, address: str, prefixlen: int) -> None:
        family, packed = rtnl.ip_bytes(address)
        # An IPv6 address is usable at once: it is the pod's own by its lease, no duplicate to detect.
        flags = rtnl.IFA_F_NODAD if family == socket.AF_INET6 else 0
        body = rtnl.IFADDRMSG.pack(family, prefixlen, flags, 0, interface_index(name))
        body += attribute(rtnl.IFA_LOCAL, packed) + attribute(rtnl.IFA_ADDRESS, packed)
        if flags:
            body += attribute(rtnl.IFA_FLAGS, u32(flags))
        self.request(rtnl.RTM_NEWADDR, body, "add address", name, rtnl.CREATE)

    def add_default_route(self, name: str, gateway: str) -> None:
        family, packed = rtnl.ip_bytes(gateway)
        body = rtnl.RTMSG.pack(
            family, 0, 0, 0, rtnl.RT_TABLE_MAIN, rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST, 0
        )
        body += attribute(rtnl.RTA_GATEWAY, packed) + attribute(rtnl.RTA_OIF, u32(interface_index(name)))
        self.request(rtnl.RTM_NEWROUTE, body, "add default route", name, rtnl.CREATE)


def veth_peer(name: str, mac: str, namespace_fd: int) -> bytes:
    """A veth's IFLA_INFO_DATA: its peer, called name, with the MAC mac, in the namespace of namespace_fd."""
    peer = attribute(rtnl.IFLA_IFNAME, text(name)) + attribute(rtnl.IFLA_ADDRESS, rtnl.mac_bytes(mac))
    peer += attribute(rtnl.IFLA_NET_NS_FD, u32(namespace_fd))
    return attribute(rtnl.VETH_INFO_PEER, rtnl.link_message(attributes=peer))


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
        netlink.add_address(network.bridge, network.gateway6, _prefixlen6(network))
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
        inside.add_address(POD_INTERFACE, address6, _prefixlen6(network))
        inside.add_default_route(POD_INTERFACE, network.gateway6)


def _prefixlen6(network: Network) -> int:
    return int(network.subnet6.partition("/")[2])


def random_mac() -> str:
    """A locally administered unicast MAC. A bridge given one keeps it; one without takes the lowest
    of its ports' as they come and go, and each change flushes the host's neighbour entries on it
    and leaves pods' ARP caches with a gateway MAC that no longer answers."""
    return ":".join(["02", *(f"{byte:02x}" for byte in os.urandom(5))])


def create_pod_interface(
    network: Network,
    netns_name: str,
    veth: str,
    address: str,
    tag: str,
    before_attaching: Callable[[], None] = lambda: None,
) -> None:
    """A named network namespace whose eth0 (with the MAC peer_mac(veth)) is one end of a veth pair;
    the other end, veth, is a port of the bridge, with `tag` as its alias so that gc can tell whose it is.
    before_attaching runs once all else is done, before the veth is up and on the bridge: until then
    nothing the pod's end sends goes anywhere (sdrun.net.pod waits there for the veth's nft filter)."""
    namespace = create_netns(netns_name)
    namespace_fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Netlink() as netlink:
            netlink.create_link(veth, "veth", veth_peer(POD_INTERFACE, peer_mac(veth), namespace_fd))
            netlink.set_link(veth, ifalias=tag)
    finally:
        os.close(namespace_fd)
    with _netlink_in(namespace) as inside:
        refuse_router_advertisements("all", "default", POD_INTERFACE)
        sysctl("net/ipv4/ping_group_range", caps.ICMP_SOCKET_GROUPS)  # ping without NET_RAW
        inside.add_address(POD_INTERFACE, address, network.prefixlen)
        inside.set_link(POD_INTERFACE, up=True)
        inside.set_link("lo", up=True)
        inside.add_default_route(POD_INTERFACE, network.gateway)  # its link is down until the veth is up
    before_attaching()
    with Netlink() as netlink:
        netlink.set_link(veth, up=True, master=interface_index(network.bridge))


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
