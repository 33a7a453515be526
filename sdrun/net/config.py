"""Networks: the default one (settings in <root>/net.toml) and those `sdrun network create` makes.

A network is a bridge, an IPv4 subnet and, if it was made with IPv6, an IPv6
subnet (a ULA /64 derived from the host's machine id, the sdrun root and the
network's name, unless one is given). Its definition lives in
<root>/net/<name>/network.json; the default network's is written the first
time a pod uses it, with the subnets from net.toml or else the first candidate
that clashes with none of the host's routes (read from /proc/net/route and
/proc/net/ipv6_route).
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
from pathlib import Path
from typing import NamedTuple

from sdrun import records
from sdrun.errors import NotFound, SdrunError, SpecError
from sdrun.files import write_atomically
from sdrun.net import DEFAULT, HOST, NONE
from sdrun.paths import Paths

# Candidates for the default subnet, in order; podman's 10.88.0.0/16 and Docker's 172.17.0.0/16 are left out.
DEFAULT_SUBNETS = ("10.87.0.0/16", "10.86.0.0/16", "10.85.0.0/16", "172.30.0.0/16", "192.168.230.0/24")
DEFAULT_BRIDGE = "sdrun0"
BRIDGE_PREFIX = "sdrun"
RESERVED_NAMES = (HOST, NONE)
MAX_PREFIX = 29  # a gateway and at least a handful of pods
MAX_PREFIX6 = 96  # a pod's IPv6 address is the subnet's plus its IPv4 address's host part, up to 32 bits
ULA_PREFIX = 0xFD  # fd00::/8: unique local addresses with a locally chosen global ID (RFC 4193)


class Network(NamedTuple):
    name: str
    subnet: str  # e.g. 10.87.0.0/16
    bridge: str
    subnet6: str = ""  # e.g. fd3c:1a2b:3c4d::/64; "" = no IPv6

    @property
    def gateway6(self) -> str:
        """The bridge's IPv6 address: the subnet's ::1, the twin of the gateway's host part."""
        return self.address6(self.gateway)

    def address6(self, address: str) -> str:
        """The IPv6 address that goes with an IPv4 address of the subnet: the IPv6 subnet's plus
        the same host part (10.87.0.5 in 10.87.0.0/16: ...::5). No lease of its own is needed."""
        network6 = ipaddress.IPv6Network(self.subnet6)
        host_part = int(ipaddress.IPv4Address(address)) - int(self.interface.network.network_address)
        return str(network6.network_address + host_part)

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's own address: the subnet's first host."""
        return str(next(self.interface.network.hosts()))

    @property
    def prefixlen(self) -> int:
        return self.interface.network.prefixlen


def definition_path(root: Path, name: str) -> Path:
    return Paths(root).network_definition(name)


def parse_subnet(text: str) -> str:
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as error:
        raise SpecError(f"invalid subnet '{text}': {error}") from None
    if subnet.prefixlen > MAX_PREFIX:
        raise SpecError(f"invalid subnet '{text}': at most /{MAX_PREFIX}, room for a gateway and some pods")
    if subnet.is_loopback or subnet.is_multicast or subnet.is_link_local or subnet.is_unspecified:
        raise SpecError(f"invalid subnet '{text}': use a private range, e.g. 10.89.0.0/24")
    return str(subnet)


def parse_subnet6(text: str) -> str:
    try:
        subnet = ipaddress.IPv6Network(text, strict=True)
    except ValueError as error:
        raise SpecError(f"invalid IPv6 subnet '{text}': {error}") from None
    if subnet.prefixlen > MAX_PREFIX6:
        raise SpecError(f"invalid IPv6 subnet '{text}': at most /{MAX_PREFIX6}, room for the IPv4 subnet's hosts")
    if subnet.is_loopback or subnet.is_multicast or subnet.is_link_local or subnet.is_unspecified:
        raise SpecError(f"invalid IPv6 subnet '{text}': use a unique local range, e.g. fd00:89::/64")
    return str(subnet)


def unique_local_subnet(root: Path, name: str) -> str:
    """A ULA /64 of the network's own: fd, then 40 bits of a hash of the host's machine id, the
    sdrun root and the network's name (the same each time, different for each network), subnet 0."""
    import hashlib

    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    digest = hashlib.sha256(f"sdrun\0{machine}\0{root}\0{name}".encode()).digest()
    prefix = bytes([ULA_PREFIX]) + digest[:5] + bytes(10)
    return f"{ipaddress.IPv6Address(prefix)}/64"


def host_routes6(exclude_interfaces: frozenset[str] = frozenset()) -> list[ipaddress.IPv6Network]:
    """The destinations of the host's IPv6 routes (from /proc/net/ipv6_route), but the default
    route, link-local, multicast and loopback ones."""
    try:
        lines = Path("/proc/net/ipv6_route").read_text().splitlines()
    except FileNotFoundError:  # no IPv6 in this kernel
        return []
    routes = []
    for line in lines:
        destination, prefixlen, *_, interface = line.split()
        route = ipaddress.IPv6Network(f"{ipaddress.IPv6Address(bytes.fromhex(destination))}/{int(prefixlen, 16)}")
        ignored = route.prefixlen == 0 or route.is_link_local or route.is_multicast or route.is_loopback
        if not ignored and interface not in exclude_interfaces and interface != "lo":
            routes.append(route)
    return routes


def host_routes(exclude_interfaces: frozenset[str] = frozenset()) -> list[ipaddress.IPv4Network]:
    """The destinations of the host's IPv4 routes, but the default route (from /proc/net/route)."""
    import socket  # here: a pod's tear-down imports this module, and needs none of it

    routes = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        interface, destination, _gateway, _flags, _, _, _, mask, *_ = line.split()
        if interface in exclude_interfaces or int(mask, 16) == 0:
            continue
        address = socket.inet_ntoa(struct.pack("<I", int(destination, 16)))
        netmask = socket.inet_ntoa(struct.pack("<I", int(mask, 16)))
        routes.append(ipaddress.IPv4Network(f"{address}/{netmask}", strict=False))
    return routes


def clash(subnet: str, root: Path, ignore: str | None = None) -> str | None:
    """What subnet would overlap: a host route or another sdrun network; None if nothing."""
    network = ipaddress.IPv4Network(subnet)
    others = [item for item in networks(root) if item.name != ignore]
    ours = frozenset(item.bridge for item in others)
    for route in host_routes(ours):
        if network.overlaps(route):
            return f"the host's route to {route}"
    for other in others:
        if network.overlaps(ipaddress.IPv4Network(other.subnet)):
            return f"network '{other.name}' ({other.subnet})"
    return None


def clash6(subnet6: str, root: Path, ignore: str | None = None) -> str | None:
    """What an IPv6 subnet would overlap: a host route or another sdrun network's; None if nothing."""
    network = ipaddress.IPv6Network(subnet6)
    others = [item for item in networks(root) if item.name != ignore]
    for route in host_routes6(frozenset(item.bridge for item in others)):
        if network.overlaps(route):
            return f"the host's route to {route}"
    for other in others:
        if other.subnet6 and network.overlaps(ipaddress.IPv6Network(other.subnet6)):
            return f"network '{other.name}' ({other.subnet6})"
    return None


def ipv6_subnet(root: Path, name: str, given: str, where: str = "") -> str:
    """The IPv6 subnet of a network made with IPv6: the one given, or its own ULA /64; checked."""
    subnet6 = parse_subnet6(given) if given else unique_local_subnet(root, name)
    if (reason := clash6(subnet6, root, ignore=name)) is not None:
        raise SdrunError(f"{where}IPv6 subnet {subnet6} overlaps {reason}")
    return subnet6


def networks(root: Path) -> list[Network]:
    found = []
    try:
        entries = sorted(os.scandir(Paths(root).net), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        path = definition_path(root, entry.name)
        if path.exists():
            found.append(Network(**json.loads(path.read_text())))
    return found


def load(root: Path, name: str) -> Network:
    """A network by name; the default one is defined on first use."""
    path = definition_path(root, name)
    if path.exists():
        return Network(**json.loads(path.read_text()))
    if name != DEFAULT:
        raise NotFound(f"no such network: '{name}'", hint="'sdrun network list' shows them; create it first")
    return _save(root, _default_network(root))


def _default_network(root: Path) -> Network:
    settings = _net_toml(root)
    bridge = str(settings.get("bridge", DEFAULT_BRIDGE))
    subnet6 = ""
    if settings.get("ipv6", False) is True or "subnet6" in settings:
        subnet6 = ipv6_subnet(root, DEFAULT, str(settings.get("subnet6", "")), f"{root / 'net.toml'}: ")
    if "subnet" in settings:
        subnet = parse_subnet(str(settings["subnet"]))
        if (reason := clash(subnet, root, ignore=DEFAULT)) is not None:
            raise SdrunError(f"{Paths(root).net_settings}: subnet {subnet} overlaps {reason}")
        return Network(DEFAULT, subnet, bridge, subnet6)
    for candidate in DEFAULT_SUBNETS:
        if clash(candidate, root, ignore=DEFAULT) is None:
            return Network(DEFAULT, candidate, bridge, subnet6)
    raise SdrunError("every candidate subnet for the default network overlaps a host route", hint="set one in net.toml")


def _net_toml(root: Path) -> dict[str, object]:
    import tomllib

    path = Paths(root).net_settings
    try:
        with path.open("rb") as stream:
            settings = tomllib.load(stream)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as error:
        raise SdrunError(f"{path}: invalid TOML: {error}") from None
    unknown = set(settings) - {"subnet", "bridge", "ipv6", "subnet6"}
    if unknown:
        raise SdrunError(
            f"{path}: unknown key '{sorted(unknown)[0]}'", hint="known keys: bridge, ipv6, subnet, subnet6"
        )
    if not isinstance(settings.get("ipv6", False), bool):
        raise SdrunError(f"{path}: ipv6 must be true or false")
    return settings


def create(root: Path, name: str, subnet: str, ipv6: bool = False, subnet6: str = "") -> Network:
    """A new network; with IPv6 (ipv6, or an IPv6 subnet given) it has subnet6 too."""
    if name in RESERVED_NAMES:
        raise SpecError(f"'{name}' is not a network name: it is a --net mode")
    subnet = parse_subnet(subnet)
    if subnet6:
        subnet6 = parse_subnet6(subnet6)
    if definition_path(root, name).exists():
        raise SdrunError(f"network '{name}' already exists")
    if (reason := clash(subnet, root)) is not None:
        raise SdrunError(f"subnet {subnet} overlaps {reason}")
    if ipv6 or subnet6:
        subnet6 = ipv6_subnet(root, name, subnet6)
    taken = {network.bridge for network in networks(root)} | set(os.listdir("/sys/class/net")) | {DEFAULT_BRIDGE}
    bridge = next(f"{BRIDGE_PREFIX}{index}" for index in range(1, 10_000) if f"{BRIDGE_PREFIX}{index}" not in taken)
    return _save(root, Network(name, subnet, bridge, subnet6))


def _save(root: Path, network: Network) -> Network:
    path = definition_path(root, network.name)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(Paths(root).net, 0o755)  # a pod in a user namespace reads its network's hosts file through it
    write_atomically(path, json.dumps(records.plain(network), indent=2) + "\n")
    return network
