"""Netlink, through pyroute2: bridges, veth pairs and named network namespaces.

The one module of sdrun that imports pyroute2. Importing it costs ~130 ms or
more, so only the set-up and tear-down of a pod on a network import this
module, and only when there is netlink work to do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from sdrun.errors import SdrunError
from sdrun.net.config import Network

POD_INTERFACE = "eth0"
ENODEV = 19
EEXIST = 17


def sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ensure_bridge(network: Network) -> None:
    """The network's bridge, up, with the gateway address; created if missing."""
    with IPRoute() as ipr:
        if not link_exists(network.bridge):
            with contextlib.suppress(NetlinkError):  # EEXIST: made since we looked, by a racing root
                ipr.link("add", ifname=network.bridge, kind="bridge")
        index = _index(ipr, network.bridge)
        try:
            ipr.addr("add", index=index, address=network.gateway, prefixlen=network.prefixlen)
        except NetlinkError as error:
            if error.code != EEXIST:
                raise
        ipr.link("set", index=index, state="up")
    # Port forwarding from 127.0.0.1 sends packets with a loopback source into the bridge: allowed on it alone.
    sysctl(f"net/ipv4/conf/{network.bridge}/route_localnet", "1")
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        sysctl("net/ipv4/ip_forward", "1")  # outbound NAT and published ports reached from other hosts route


def create_pod_interface(network: Network, netns_name: str, veth: str, address: str, tag: str) -> None:
    """A named network namespace whose eth0 is one end of a veth pair; the other end, veth,
    is a port of the bridge, with `tag` as its alias so that gc can tell whose it is."""
    netns.create(netns_name)
    with IPRoute() as ipr:
        ipr.link("add", ifname=veth, kind="veth", peer={"ifname": POD_INTERFACE, "net_ns_fd": netns_name})
        index = _index(ipr, veth)
        ipr.link("set", index=index, ifalias=tag)
        ipr.link("set", index=index, master=_index(ipr, network.bridge), state="up")
    with IPRoute(netns=netns_name) as inside:
        interface = _index(inside, POD_INTERFACE)
        inside.addr("add", index=interface, address=address, prefixlen=network.prefixlen)
        inside.link("set", index=interface, state="up")
        inside.link("set", index=_index(inside, "lo"), state="up")
        inside.route("add", dst="0.0.0.0/0", gateway=network.gateway, oif=interface)


def delete_link(name: str) -> None:
    """Delete an interface (a veth takes its peer along); gone already is fine."""
    if not link_exists(name):
        return
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as error:
            if error.code != ENODEV:
                raise SdrunError(f"cannot delete interface {name}: {os.strerror(error.code)}") from None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise SdrunError(f"interface {name} is missing")
    return int(found[0])
