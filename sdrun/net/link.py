"""Netlink, through pyroute2: bridges, veth pairs and named network namespaces.

The one module of sdrun that imports pyroute2. Importing it costs ~130 ms or
more, so only the set-up and tear-down of a pod on a network import this
module, and only when there is netlink work to do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sdrun.imports import skip_package_init

skip_package_init("pyroute2")  # its __init__ imports NDB, IPDB, conntrack... (~45 ms) that sdrun never uses
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

from sdrun.errors import SdrunError  # noqa: E402
from sdrun.linux import syscalls as sc  # noqa: E402
from sdrun.net import NETNS_DIR  # noqa: E402
from sdrun.net.config import Network  # noqa: E402

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
    namespace = create_netns(netns_name)
    with IPRoute() as ipr:
        ipr.link("add", ifname=veth, kind="veth", peer={"ifname": POD_INTERFACE, "net_ns_fd": str(namespace)})
        index = _index(ipr, veth)
        ipr.link("set", index=index, ifalias=tag)
        ipr.link("set", index=index, master=_index(ipr, network.bridge), state="up")
    with _netlink_in(namespace) as inside:
        interface = _index(inside, POD_INTERFACE)
        inside.addr("add", index=interface, address=address, prefixlen=network.prefixlen)
        inside.link("set", index=interface, state="up")
        inside.link("set", index=_index(inside, "lo"), state="up")
        inside.route("add", dst="0.0.0.0/0", gateway=network.gateway, oif=interface)


def create_netns(name: str) -> Path:
    """A named network namespace, as `ip netns add` makes one: a new namespace bound on a file in
    /run/netns, a shared mount so that the name shows in every mount namespace. Made by this
    thread and left again: pyroute2 would fork a helper process for it."""
    _share_netns_dir()
    path = NETNS_DIR / name
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
def _netlink_in(namespace: Path) -> Iterator[IPRoute]:
    """A netlink socket inside the namespace: a socket belongs to the namespace it was opened in."""
    with _original_netns():
        sc.setns_path(namespace, sc.CLONE_NEWNET)
        ipr = IPRoute()
    with ipr:
        yield ipr


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
