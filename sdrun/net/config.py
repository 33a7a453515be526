"""Networks: the default one (settings in <root>/net.toml) and those `sdrun network create` makes.

A network is a bridge and an IPv4 subnet. Its definition lives in
<root>/net/<name>/network.json; the default network's is written the first
time a pod uses it, with the subnet from net.toml or else the first candidate
that clashes with none of the host's routes (read from /proc/net/route).
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


class Network(NamedTuple):
    name: str
    subnet: str  # e.g. 10.87.0.0/16
    bridge: str

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
    if "subnet" in settings:
        subnet = parse_subnet(str(settings["subnet"]))
        if (reason := clash(subnet, root, ignore=DEFAULT)) is not None:
            raise SdrunError(f"{Paths(root).net_settings}: subnet {subnet} overlaps {reason}")
        return Network(DEFAULT, subnet, bridge)
    for candidate in DEFAULT_SUBNETS:
        if clash(candidate, root, ignore=DEFAULT) is None:
            return Network(DEFAULT, candidate, bridge)
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
    unknown = set(settings) - {"subnet", "bridge"}
    if unknown:
        raise SdrunError(f"{path}: unknown key '{sorted(unknown)[0]}'", hint="known keys: bridge, subnet")
    return settings


def create(root: Path, name: str, subnet: str) -> Network:
    if name in RESERVED_NAMES:
        raise SpecError(f"'{name}' is not a network name: it is a --net mode")
    subnet = parse_subnet(subnet)
    if definition_path(root, name).exists():
        raise SdrunError(f"network '{name}' already exists")
    if (reason := clash(subnet, root)) is not None:
        raise SdrunError(f"subnet {subnet} overlaps {reason}")
    taken = {network.bridge for network in networks(root)} | set(os.listdir("/sys/class/net")) | {DEFAULT_BRIDGE}
    bridge = next(f"{BRIDGE_PREFIX}{index}" for index in range(1, 10_000) if f"{BRIDGE_PREFIX}{index}" not in taken)
    return _save(root, Network(name, subnet, bridge))


def _save(root: Path, network: Network) -> Network:
    path = definition_path(root, network.name)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(Paths(root).net, 0o755)  # a pod in a user namespace reads its network's hosts file through it
    write_atomically(path, json.dumps(records.plain(network), indent=2) + "\n")
    return network
