"""sdrun's nftables rules: one table, `ip sdrun`, whose rules never change; pods and networks
come and go as elements of its sets and maps, each change one `nft -f -` transaction.

  prerouting, output (nat): to an address of this host -> publish
  publish: DNAT by (host address, protocol, port) in @published_at, else by (protocol, port) in @published
  postrouting (nat): masquerade 127.0.0.0/8 into a bridge (port forwarding from localhost; the
    bridge has route_localnet=1), DNAT-ed traffic from a pod back into a bridge (hairpin),
    and a pod's traffic that leaves its networks (outbound NAT)
  forward (filter): into a bridge only replies, published ports, and traffic within one bridge
  from_bridges (filter, prerouting at raw priority): nothing from a bridge to or from 127.0.0.0/8
    (route_localnet=1 would route it to the host's loopback services)

and one table, `bridge sdrun`, that sees each frame a pod sends before the bridge or the host
does (prerouting of the bridge family, on every port in @pods: a pod's veth):

  from_pod: IPv4 whose (interface, ethernet source, IPv4 source) is the pod's element of
    @sources, ARP whose sender MAC and IP are too; nothing else (no IPv6, no other ethertype)

Removing an element that is already gone fails the whole transaction in nft 1.0.6
(which has no `destroy`), so each removal first adds the element: adding one that
exists is no error.

A pod's start adds its elements alone (~2 ms of nft) when the table holds this
version's skeleton, and the skeleton with them (~16 ms: nft compiles every rule)
when it does not: see add().
"""

from __future__ import annotations

import json
import subprocess
import zlib
from collections.abc import Callable, Iterable

from sdrun.errors import SdrunError
from sdrun.net import peer_mac, unplug
from sdrun.net.config import Network
from sdrun.net.ports import PortMapping

TABLE = "ip sdrun"
BRIDGE_TABLE = "bridge sdrun"

RULES = f"""\
add table {TABLE}
add set {TABLE} bridges {{ type ifname; }}
add set {TABLE} subnets {{ type ipv4_addr; flags interval; }}
add set {TABLE} intra {{ type ifname . ifname; }}
add map {TABLE} published {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
add map {TABLE} published_at {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
add chain {TABLE} publish
add chain {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain {TABLE} output {{ type nat hook output priority -100; policy accept; }}
add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}
flush chain {TABLE} publish
flush chain {TABLE} prerouting
flush chain {TABLE} output
flush chain {TABLE} postrouting
flush chain {TABLE} forward
add rule {TABLE} publish meta l4proto {{ tcp, udp }} dnat to ip daddr . meta l4proto . th dport map @published_at
add rule {TABLE} publish meta l4proto {{ tcp, udp }} dnat to meta l4proto . th dport map @published
add rule {TABLE} prerouting fib daddr type local jump publish
add rule {TABLE} output fib daddr type local jump publish
add rule {TABLE} postrouting oifname @bridges ip saddr 127.0.0.0/8 masquerade
add rule {TABLE} postrouting oifname @bridges ct status dnat ip saddr @subnets masquerade
add rule {TABLE} postrouting ip saddr @subnets oifname != @bridges masquerade
add rule {TABLE} forward oifname @bridges ct state established,related accept
add rule {TABLE} forward oifname @bridges ct status dnat accept
add rule {TABLE} forward iifname . oifname @intra accept
add rule {TABLE} forward oifname @bridges drop
add chain {TABLE} from_bridges {{ type filter hook prerouting priority raw; policy accept; }}
flush chain {TABLE} from_bridges
add rule {TABLE} from_bridges iifname @bridges ip daddr 127.0.0.0/8 drop
add rule {TABLE} from_bridges iifname @bridges ip saddr 127.0.0.0/8 drop
add table {BRIDGE_TABLE}
add set {BRIDGE_TABLE} pods {{ type ifname; }}
add set {BRIDGE_TABLE} sources {{ type ifname . ether_addr . ipv4_addr; }}
add chain {BRIDGE_TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}
add chain {BRIDGE_TABLE} from_pod
flush chain {BRIDGE_TABLE} prerouting
flush chain {BRIDGE_TABLE} from_pod
add rule {BRIDGE_TABLE} prerouting iifname @pods jump from_pod
add rule {BRIDGE_TABLE} from_pod ip daddr 127.0.0.0/8 drop
add rule {BRIDGE_TABLE} from_pod iifname . ether saddr . ip saddr @sources accept
add rule {BRIDGE_TABLE} from_pod arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
iifname . ether saddr . arp saddr ip @sources iifname . arp saddr ether . arp saddr ip @sources accept
add rule {BRIDGE_TABLE} from_pod drop
"""


# A set named after the checksum of RULES, with one element: adding to it fails in a table that
# these rules did not make (none at all after `nft flush ruleset`, or another version of sdrun's).
MARK = f"rules_{zlib.crc32(RULES.encode()):08x}"
MARK_ELEMENT = f'add element {TABLE} {MARK} {{ "sdrun" }}\n'
SKELETON = f"{RULES}add set {TABLE} {MARK} {{ type ifname; }}\n{MARK_ELEMENT}"  # idempotent


def network_elements(network: Network) -> list[tuple[str, str]]:
    """(set, element) pairs that make a network's bridge known to the rules."""
    bridge = json.dumps(network.bridge)
    return [("bridges", bridge), ("subnets", network.subnet), ("intra", f"{bridge} . {bridge}")]


def port_elements(address: str, ports: Iterable[PortMapping]) -> list[tuple[str, str, str]]:
    """(map, key, value) triples that forward a pod's published ports to its address."""
    elements = []
    for port in ports:
        value = f"{address} . {port.container_port}"
        if port.host_ip:
            elements.append(("published_at", f"{port.host_ip} . {port.protocol} . {port.host_port}", value))
        else:
            elements.append(("published", f"{port.protocol} . {port.host_port}", value))
    return elements


def source_element(veth: str, address: str) -> str:
    """What a pod may send from: its veth's peer's MAC and its lease's address, on its veth alone."""
    return f"{json.dumps(veth)} . {peer_mac(veth)} . {address}"


def source_commands(verb: str, veth: str, address: str) -> str:
    """Add or delete the elements that filter what a pod sends: its veth in @pods, its source in @sources."""
    return (
        f"{verb} element {BRIDGE_TABLE} pods {{ {json.dumps(veth)} }}\n"
        f"{verb} element {BRIDGE_TABLE} sources {{ {source_element(veth, address)} }}\n"
    )


def add(network: Network, address: str, ports: Iterable[PortMapping], veth: str = "") -> None:
    """Make a pod's network, ports and source filter (with veth) known to the rules; the skeleton
    too, if the table lacks it."""
    start_add(network, address, ports, veth)()


def start_add(network: Network, address: str, ports: Iterable[PortMapping], veth: str = "") -> Callable[[], None]:
    """add(), begun: nft works on it while the caller goes on (a pod's set-up makes its veth pair
    meanwhile). Call the result, once or more, to wait for it to be done (or to fail)."""
    elements = element_commands(network, address, ports)
    if veth:
        elements += source_commands("add", veth, address)
    marked = unplug.NftRun(MARK_ELEMENT + elements)  # fails unless the table holds these rules
    waited = False

    def finish() -> None:
        nonlocal waited
        if waited:
            return
        waited = True
        try:
            marked.wait()
        except SdrunError:
            apply(SKELETON + elements)

    return finish


def element_commands(network: Network, address: str, ports: Iterable[PortMapping]) -> str:
    """The network's elements and the pod's ports."""
    lines = [f"add element {TABLE} {name} {{ {element} }}\n" for name, element in network_elements(network)]
    lines += [
        f"add element {TABLE} {name} {{ {key} : {value} }}\n" for name, key, value in port_elements(address, ports)
    ]
    return "".join(lines)


def remove_port_commands(address: str, ports: Iterable[PortMapping]) -> str:
    return remove_elements_commands(port_elements(address, ports))


def remove_source_commands(veth: str, address: str) -> str:
    """Remove a pod's source element. The table and set are declared first (a no-op when they
    exist): after `nft flush ruleset` there is nothing to remove, and the removal must not fail."""
    return (
        f"add table {BRIDGE_TABLE}\n"
        f"add set {BRIDGE_TABLE} pods {{ type ifname; }}\n"
        f"add set {BRIDGE_TABLE} sources {{ type ifname . ether_addr . ipv4_addr; }}\n"
        + source_commands("add", veth, address)
        + source_commands("delete", veth, address)
    )


def remove_network_commands(network: Network) -> str:
    lines = []
    for name, element in network_elements(network):
        lines.append(f"add element {TABLE} {name} {{ {element} }}\n")
        lines.append(f"delete element {TABLE} {name} {{ {element} }}\n")
    return "".join(lines)


def remove_table_commands() -> str:
    return "".join(f"add table {table}\ndelete table {table}\n" for table in (TABLE, BRIDGE_TABLE))


def table_exists() -> bool:
    return subprocess.run(["nft", "list", "table", *TABLE.split()], capture_output=True, check=False).returncode == 0


def apply(commands: str) -> None:
    """Run commands as one nftables transaction: all of them take effect, or none."""
    if not commands:
        return
    try:
        result = subprocess.run(["nft", "-f", "-"], input=commands, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SdrunError("nft is not installed: networking needs nftables", hint="apt-get install nftables") from None
    if result.returncode != 0:
        first = next((line for line in result.stderr.splitlines() if line.strip()), "failed")
        raise SdrunError(f"nft: {first}")


def published(address_of: set[str]) -> list[tuple[str, str, str]]:
    """Every port element of the table whose target address is in address_of: gc's leftovers."""
    result = subprocess.run(["nft", "-j", "list", "table", *TABLE.split()], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return []
    found = []
    for item in json.loads(result.stdout).get("nftables", []):
        nft_map = item.get("map")
        if not nft_map or nft_map.get("name") not in ("published", "published_at"):
            continue
        for key, value in nft_map.get("elem", []):
            target = value["concat"]
            if target[0] in address_of:
                key_text = " . ".join(str(part) for part in key["concat"])
                found.append((nft_map["name"], key_text, f"{target[0]} . {target[1]}"))
    return found


def remove_elements_commands(elements: Iterable[tuple[str, str, str]]) -> str:
    lines = []
    for name, key, value in elements:
        lines.append(f"add element {TABLE} {name} {{ {key} : {value} }}\n")
        lines.append(f"delete element {TABLE} {name} {{ {key} }}\n")
    return "".join(lines)
