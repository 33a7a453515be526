"""A pod's network, set up before its app starts and torn down however it ends.

setup() runs in `sdrun run` (a pod that does not restart, and --scope) or in
the unit's ExecStartPre, teardown() in its ExecStopPost and in `sdrun gc`. The
networking lock is held only to choose, write and remove leases (and rewrite
the hosts file): the netlink and nft work run outside it, so that pods starting
and stopping at once do not queue on each other; each tear-down holds its own
lease's flock instead (docs/networking.md, "Tear-down"). The order makes every
crash recoverable: the lease, which names all the pod's objects, is written
first and removed last. A network's bridge and its
nftables elements outlive its last pod, for the next one; `sdrun gc` and
`sdrun network rm` retire them (and the table with the last network).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sdrun.errors import SdrunError
from sdrun.net import (
    HOST_GATEWAY,
    NETNS_DIR,
    NETNS_PREFIX,
    VETH_PREFIX,
    config,
    ipam,
    netns_name,
    nft,
    on_network,
    unplug,
    veth_name,
)
from sdrun.net.config import Network
from sdrun.net.ipam import Lease
from sdrun.net.ports import PortMapping
from sdrun.paths import Paths

if TYPE_CHECKING:  # sdrun.pod (and the spec it imports) would cost every tear-down ~10 ms
    from sdrun.pod import Pod


def alias_tag(root: Path) -> str:
    """What a pod's host-side interface carries as its alias: whose root it belongs to."""
    return f"sdrun:{root}:"


def setup(root: Path, pod: Pod) -> Lease:
    """Give the pod its namespace, interface, address and ports; undo all of it on failure.
    The networking lock is held only while the lease is chosen and written: building what it
    names (~20 ms of netlink and nft) runs beside other pods' set-ups and tear-downs."""
    if not on_network(pod.spec):
        raise SdrunError(f"pod '{pod.name}' has no network to set up (--net {pod.spec.net})")
    teardown(root, pod.uuid, pod.spec.net)  # a restart whose previous tear-down did not run
    _reclaim_ports_of_removed_pods(root, pod.spec.ports)
    with ipam.locked(root):
        network = config.load(root, pod.spec.net)
        lease = _new_lease(root, network, pod)
        ipam.write_lease(root, lease)
        write_teardown_plan(root, lease)  # after the lease: a lease without a plan is undone all the same
    try:
        _build(root, network, lease)
    except BaseException:
        teardown(root, lease.pod, lease.network)
        raise
    return lease


def write_teardown_plan(root: Path, lease: Lease) -> None:
    """What the unit's tear-down (sdrun.net.unplug) undoes, from the lease: its interface and
    namespace, its lines of the network's hosts file and the nft commands that remove its elements."""
    hosts_lines = ipam.hosts_file([lease]).removeprefix(ipam.LOCALHOST_LINES).splitlines(keepends=True)
    plan = unplug.Plan(lease.veth, lease.netns, hosts_lines, _nft_removal(lease))
    path = Paths(root).teardown_plan(lease.network, lease.pod)
    # Renamed into place, but not synced as the lease is: only the unit of this boot reads it (every
    # start of an installed pod writes it again), and gc, after a crash, works from the lease.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(plan.to_text())
    temporary.rename(path)


def _nft_removal(lease: Lease) -> str:
    """The nft commands that remove a pod's elements: its published ports and its source filter."""
    return nft.remove_port_commands(lease.address, lease.ports, lease.address6) + nft.remove_source_commands(
        lease.veth, lease.address, lease.address6
    )


def _reclaim_ports_of_removed_pods(root: Path, ports: tuple[PortMapping, ...]) -> None:
    """Tear down the network of a removed pod that still holds one of these ports: its tear-down
    was killed (or never ran), and nothing but gc would undo it. A pod's directory outlives its
    tear-down (a detached --rm removes it after; `sdrun run --rm` and `sdrun rm` once the unit
    is gone), so a lease without one is no live pod's (a pod of several apps has its directory
    among the pod groups: sdrun.pods)."""
    if not ports:
        return
    paths = Paths(root)
    for lease in ipam.all_leases(root):
        clashes = any(port.clashes_with(theirs) for port in ports for theirs in lease.ports)
        if clashes and not paths.pod_dir(lease.pod).exists() and not (paths.pod_groups / lease.pod).exists():
            teardown(root, lease.pod, lease.network)


def _new_lease(root: Path, network: Network, pod: Pod) -> Lease:
    everyone = ipam.all_leases(root)
    _check_ports_fit(network, pod.spec.ports)
    ipam.check_ports(pod.spec.ports, everyone)
    for port in pod.spec.ports:
        _check_host_port_free(port, bool(network.subnet6))
    taken = {lease.address for lease in everyone if lease.network == network.name}
    address = ipam.free_address(network, taken)
    return Lease(
        pod=pod.uuid,
        name=pod.name,
        hostname=pod.spec.isolation.hostname or pod.name,
        network=network.name,
        address=address,
        address6=network.address6(address) if network.subnet6 else "",
        netns=netns_name(pod.uuid),
        veth=veth_name(pod.uuid),
        ports=pod.spec.ports,
        added_hosts=tuple(
            entry.removesuffix(HOST_GATEWAY) + network.gateway if entry.endswith(":" + HOST_GATEWAY) else entry
            for entry in pod.spec.isolation.add_host
        ),
    )


def _check_ports_fit(network: Network, ports: tuple[PortMapping, ...]) -> None:
    """A port on an IPv6 address needs a network with IPv6."""
    for port in ports:
        if port.is_ipv6 and not network.subnet6:
            raise SdrunError(
                f"cannot publish port {port}: network '{network.name}' has no IPv6",
                hint="use a network made with 'sdrun network create --ipv6' (or ipv6 = true in net.toml)",
            )


def _check_host_port_free(port: PortMapping, ipv6: bool) -> None:
    """A host process listening on the port would be shadowed by the DNAT without a word: refuse.
    Binding (and closing at once) sends nothing anywhere. On a network with IPv6 (ipv6), a port
    on every address is checked on IPv6's every address too."""
    import socket

    if port.is_ipv6:
        _probe(port, socket.AF_INET6, port.host_ip)
        return
    _probe(port, socket.AF_INET, port.host_ip or "0.0.0.0")
    if ipv6 and not port.host_ip and socket.has_ipv6:
        _probe(port, socket.AF_INET6, "::")


def _probe(port: PortMapping, family: int, address: str) -> None:
    import socket

    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((address, port.host_port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SdrunError(f"port {port.host_port}/{port.protocol} is in use on the host") from None
            if error.errno != errno.EADDRNOTAVAIL:
                raise SdrunError(f"cannot publish port {port}: {error.strerror}") from None
            raise SdrunError(f"cannot publish port {port}: {port.host_ip} is not an address of this host") from None


def _build(root: Path, network: Network, lease: Lease) -> None:
    from sdrun.net import link  # netlink: only here

    link.ensure_bridge(network)
    if lease.address6:
        link.ensure_bridge_ipv6(network)
    # The veth's filter is made while the pair is, and exists before the veth is up on the bridge.
    filtered = nft.start_add(network, lease.address, lease.ports, lease.veth, lease.address6)
    try:
        link.create_pod_interface(
            network, lease.netns, lease.veth, lease.address, alias_tag(root) + lease.pod, before_attaching=filtered
        )
    except BaseException:
        with contextlib.suppress(SdrunError):
            filtered()  # nft is done before the set-up's failure undoes what it added
        raise
    if lease.address6:
        link.configure_pod_ipv6(network, lease.netns, lease.address6)
    with ipam.locked(root):
        ipam.update_network_files(root, network.name)


def teardown(root: Path, pod_uuid: str, network: str) -> bool:
    """Undo a pod's network, if it has one; True if there was something to undo. Holds the
    pod's own lease (a concurrent tear-down of the same pod waits, then finds nothing), and
    the networking lock only to remove it: pods that stop at once do not queue on each other."""
    with ipam.held_lease(root, network, pod_uuid) as lease:
        if lease is None:
            return False
        _undo(root, lease)
        return True


def undo_held_lease(root: Path, network: str, pod_uuid: str) -> bool:
    """teardown() for a caller that holds the pod's lease's flock already (sdrun.net.unplug, for a
    lease without a plan)."""
    lease = ipam.read_lease(root, network, pod_uuid)
    if lease is None:
        return False
    _undo(root, lease)
    return True


def _undo(root: Path, lease: Lease) -> None:
    """Undo one pod's objects, the lease that names them last. The network's bridge and
    nftables elements stay for the next pod (as docker0 does): `sdrun gc` and `sdrun network rm`
    retire a network no pod uses. The unit's own tear-down follows the plan instead (unplug)."""
    unplug.release_objects(_nft_removal(lease), lease.veth, lease.netns)
    with ipam.locked(root):
        unplug.remove_plan(str(root), lease.network, lease.pod)
        ipam.remove_lease(root, lease)
        ipam.update_network_files(root, lease.network)


def retire(root: Path, network_name: str) -> None:
    """A network without leases needs no bridge and no nftables elements; no network, no table.
    Call with the networking lock held."""
    if ipam.leases(root, network_name):
        ipam.update_network_files(root, network_name)
        return
    with contextlib.suppress(SdrunError):  # a user network removed meanwhile has nothing of its own left
        network = config.load(root, network_name)
        if Path("/sys/class/net", network.bridge).exists():
            from sdrun.net import link

            link.delete_link(network.bridge)
        if nft.table_exists():
            ipv6_table = bool(network.subnet6) and nft.table_exists(nft.TABLE6)
            nft.apply(nft.remove_network_commands(network, ipv6_table))
    paths = Paths(root)
    for path in (paths.network_hosts(network_name), paths.network_resolv_conf(network_name)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not ipam.all_leases(root) and nft.table_exists():
        nft.apply(nft.remove_table_commands())


def remove_netns(name: str) -> None:
    """Unmount and remove a named network namespace (as `ip netns delete`)."""
    unplug.remove_netns(name)


def gc(root: Path, running: set[str]) -> list[str]:
    """Undo the networks of pods that are not running (after a crash or a reboot), and any
    interface or namespace of this root that no lease names. Returns what went."""
    removed = []
    for lease in ipam.all_leases(root):
        if lease.pod not in running and teardown(root, lease.pod, lease.network):
            removed.append(f"network of pod {lease.name} ({lease.address} on {lease.network})")
    with ipam.locked(root):  # a set-up writes its lease under it before it makes anything the lease names
        leased = {lease.pod for lease in ipam.all_leases(root)}
        removed += _orphans(root, leased, running)
        for network in config.networks(root):
            if not ipam.leases(root, network.name):
                retire(root, network.name)
    return removed


def _orphans(root: Path, leased: set[str], running: set[str]) -> list[str]:
    removed = []
    tag = alias_tag(root)
    for name, alias in tagged_links(tag).items():
        if name.startswith(VETH_PREFIX) and alias.removeprefix(tag) not in leased:
            from sdrun.net import link

            link.delete_link(name)
            removed.append(f"interface {name}")
    pods = Paths(root).pods
    for entry in _listdir(NETNS_DIR):
        pod_uuid = entry.removeprefix(NETNS_PREFIX)
        # Only namespaces of this root's pods: another root's are not ours to judge.
        if entry.startswith(NETNS_PREFIX) and pod_uuid not in leased | running and (pods / pod_uuid).exists():
            remove_netns(entry)
            removed.append(f"network namespace {entry}")
    return removed


def tagged_links(prefix: str) -> dict[str, str]:
    """Interfaces whose alias starts with prefix, {name: alias}, read from sysfs (no netlink)."""
    found = {}
    for name in _listdir(Path("/sys/class/net")):
        with contextlib.suppress(OSError):
            alias = Path("/sys/class/net", name, "ifalias").read_text().strip()
            if alias.startswith(prefix):
                found[name] = alias
    return found


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
