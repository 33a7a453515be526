"""Addresses for pods, as lease files on disk, changed only under the networking lock.

<root>/net/lock                       flock(2): held while a lease is chosen and
                                      written, or removed (milliseconds, no netlink)
<root>/net/<network>/leases/<uuid>    a pod's lease (JSON): its address and every
                                      name it has on the host (netns, veth, ports);
                                      flock(2) on it: held by the pod's tear-down
<root>/net/<network>/hosts            the network's /etc/hosts, rewritten in place
<root>/net/<network>/hosts.<uuid>     the same and a pod's --add-host lines, for that pod
<root>/net/<network>/resolv.conf      the host's, minus loopback resolvers

A lease is written before anything it names exists and removed after all of it
is gone, so a crash at any point leaves a lease that `sdrun gc` can undo.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from sdrun import records
from sdrun.errors import SdrunError
from sdrun.files import write_atomically
from sdrun.net import added_hosts, lease_path, own_hosts_path
from sdrun.net.config import Network
from sdrun.net.ports import PortMapping
from sdrun.net.unplug import rewrite_in_place  # the unit's tear-down rewrites hosts files too
from sdrun.paths import Paths

LOCALHOST_LINES = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class Lease(NamedTuple):
    pod: str  # the pod's UUID
    name: str  # the pod's name: how other pods on the network reach it
    hostname: str
    network: str
    address: str
    netns: str
    veth: str
    ports: tuple[PortMapping, ...] = ()
    added_hosts: tuple[str, ...] = ()  # the pod's --add-host NAME:IP, host-gateway resolved
    address6: str = ""  # on a network with IPv6: the IPv6 twin of address (Network.address6), else ""

    def to_json(self) -> str:
        return json.dumps(records.plain(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Lease:
        data = json.loads(text)
        data["ports"] = tuple(PortMapping(**port) for port in data.get("ports", ()))
        data["added_hosts"] = tuple(data.get("added_hosts", ()))
        return cls(**data)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the networking lock of this sdrun root; waits for the holder, who holds it for the
    bookkeeping of leases alone (milliseconds), or for a whole `sdrun gc`."""
    paths = Paths(root)
    paths.net.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(paths.net_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def leases_dir(root: Path, network: str) -> Path:
    return Paths(root).leases_dir(network)


def leases(root: Path, network: str) -> list[Lease]:
    directory = leases_dir(root, network)
    try:
        names = sorted(name for name in os.listdir(directory) if not name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, KeyError):
            found.append(Lease.from_json((directory / name).read_text()))
    return found


def all_leases(root: Path) -> list[Lease]:
    try:
        networks = sorted(entry.name for entry in os.scandir(Paths(root).net) if entry.is_dir())
    except FileNotFoundError:
        return []
    return [lease for network in networks for lease in leases(root, network)]


def read_lease(root: Path, network: str, pod_uuid: str) -> Lease | None:
    try:
        return Lease.from_json(lease_path(root, network, pod_uuid).read_text())
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def held_lease(root: Path, network: str, pod_uuid: str) -> Iterator[Lease | None]:
    """A pod's lease, with an exclusive flock(2) on its file for as long as the block runs: the
    lock of the pod's tear-down. None when there is no lease, or when it was removed while we
    waited for the lock (another tear-down of the same pod got there first). A lease is written
    once (by rename) and never rewritten, so its file stays the same while it exists."""
    try:
        fd = os.open(lease_path(root, network, pod_uuid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lease = None
        if os.fstat(fd).st_nlink:  # still linked: nobody has torn it down meanwhile
            with os.fdopen(os.dup(fd)) as stream, contextlib.suppress(ValueError, TypeError, KeyError):
                lease = Lease.from_json(stream.read())
        yield lease
    finally:
        os.close(fd)


def free_address(network: Network, taken: set[str]) -> str:
    """The lowest address of the subnet that is neither the gateway nor leased."""
    reserved = taken | {network.gateway}
    for host in network.interface.network.hosts():
        if str(host) not in reserved:
            return str(host)
    raise SdrunError(f"network '{network.name}' ({network.subnet}) has no free address left")


def check_ports(ports: tuple[PortMapping, ...], others: list[Lease]) -> None:
    """Refuse a host port another pod (of any network) already publishes, or one given twice."""
    for index, port in enumerate(ports):
        for earlier in ports[:index]:
            if port.clashes_with(earlier):
                raise SdrunError(f"port {port.host_port}/{port.protocol} is published twice")
        for lease in others:
            if any(port.clashes_with(theirs) for theirs in lease.ports):
                raise SdrunError(f"port {port.host_port}/{port.protocol} is already published by pod '{lease.name}'")


def write_lease(root: Path, lease: Lease) -> None:
    path = lease_path(root, lease.network, lease.pod)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomically(path, lease.to_json())


def remove_lease(root: Path, lease: Lease) -> None:
    with contextlib.suppress(FileNotFoundError):
        own_hosts_path(root, lease.network, lease.pod).unlink()
    with contextlib.suppress(FileNotFoundError):
        lease_path(root, lease.network, lease.pod).unlink()


def hosts_file(network_leases: list[Lease]) -> str:
    """localhost, then each pod of the network by name (and hostname, when it differs)."""
    lines = [LOCALHOST_LINES]
    for lease in sorted(network_leases, key=lambda item: ipaddress.IPv4Address(item.address)):
        names = " ".join(dict.fromkeys((lease.name, lease.hostname)))  # ordered, without a repeat
        lines.append(f"{lease.address}\t{names}\n")
        if lease.address6:
            lines.append(f"{lease.address6}\t{names}\n")
    return "".join(lines)


def resolv_conf(host_resolv_conf: str) -> str:
    """The host's resolver settings without nameservers on loopback (127.0.0.53 and the like):
    inside the pod's namespace, loopback is the pod's own."""
    kept = []
    for line in host_resolv_conf.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1 and _is_loopback(words[1]):
            continue
        kept.append(line + "\n")
    return "".join(kept)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.partition("%")[0]).is_loopback
    except ValueError:
        return False


def update_network_files(root: Path, network: str) -> None:
    """The network's hosts file and resolv.conf, from its current leases and the host's resolv.conf;
    and the hosts file of each of its pods with --add-host."""
    paths = Paths(root)
    current = leases(root, network)
    shared = hosts_file(current)
    rewrite_in_place(paths.network_hosts(network), shared)
    for lease in current:
        if lease.added_hosts:
            rewrite_in_place(own_hosts_path(root, network, lease.pod), shared + added_hosts(lease.added_hosts))
    try:
        host_resolv_conf = Path("/etc/resolv.conf").read_text()
    except OSError:
        host_resolv_conf = ""
    rewrite_in_place(paths.network_resolv_conf(network), resolv_conf(host_resolv_conf))
