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

its twin for networks with IPv6, `ip6 sdrun`, made with the first pod of one (the same chains
on IPv6, but ::1: the kernel never forwards it, so output leaves it alone, and from_bridges drops
::1 from a bridge as the IPv4 table drops 127.0.0.0/8);

and one table, `bridge sdrun`, that sees each frame a pod sends before the bridge or the host
does (prerouting of the bridge family, on every port in @pods: a pod's veth):

  from_pod: IPv4 whose (interface, ethernet source, IPv4 source) is the pod's element of
    @sources, ARP whose sender MAC and IP are too; IPv6 whose (interface, ethernet source, IPv6
    source) is in @sources6 (a pod on a network with IPv6: its address, its link-local address,
    and :: for the neighbour solicitations of duplicate address detection alone), no router
    advertisement or redirect, and neighbour discovery that names only the pod's own addresses
    (@nd_targets) and MAC (@nd_lladdrs); nothing else (no other ethertype)

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
from sdrun.net.ports import ANY_IPV6, PortMapping

TABLE = "ip sdrun"
TABLE6 = "ip6 sdrun"
BRIDGE_TABLE = "bridge sdrun"
# The sets of the bridge table that hold a pod's elements, as declared in RULES (and before a removal).
BRIDGE_SETS = {
    "pods": "type ifname;",
    "sources": "type ifname . ether_addr . ipv4_addr;",
    "sources6": "type ifname . ether_addr . ipv6_addr;",
    "nd_targets": "typeof iifname . @th,64,128;",  # an NS or NA's target address
    "nd_lladdrs": "typeof iifname . @th,208,48;",  # the MAC of its one link-layer address option
}
ICMPV6_NEIGHBOUR = "{ nd-neighbor-solicit, nd-neighbor-advert }"
ND_LENGTH = 32  # an NS or NA (24 bytes) with one option (8): a link-layer address, or a DAD's nonce

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
{"".join(f"add set {BRIDGE_TABLE} {name} {{ {kind} }}" + chr(10) for name, kind in BRIDGE_SETS.items())}\
add chain {BRIDGE_TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}
add chain {BRIDGE_TABLE} from_pod
add chain {BRIDGE_TABLE} neighbour_discovery
flush chain {BRIDGE_TABLE} prerouting
flush chain {BRIDGE_TABLE} from_pod
flush chain {BRIDGE_TABLE} neighbour_discovery
add rule {BRIDGE_TABLE} prerouting iifname @pods jump from_pod
add rule {BRIDGE_TABLE} from_pod ip daddr 127.0.0.0/8 drop
add rule {BRIDGE_TABLE} from_pod iifname . ether saddr . ip saddr @sources accept
add rule {BRIDGE_TABLE} from_pod arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
iifname . ether saddr . arp saddr ip @sources iifname . arp saddr ether . arp saddr ip @sources accept
add rule {BRIDGE_TABLE} from_pod ip6 daddr ::1 drop
add rule {BRIDGE_TABLE} from_pod icmpv6 type {{ nd-router-advert, nd-redirect }} drop
add rule {BRIDGE_TABLE} from_pod icmpv6 type {ICMPV6_NEIGHBOUR} jump neighbour_discovery
add rule {BRIDGE_TABLE} from_pod ip6 saddr :: icmpv6 type nd-neighbor-solicit \
iifname . ether saddr . ip6 saddr @sources6 accept
add rule {BRIDGE_TABLE} from_pod ip6 saddr :: drop
add rule {BRIDGE_TABLE} from_pod iifname . ether saddr . ip6 saddr @sources6 accept
add rule {BRIDGE_TABLE} from_pod drop
add rule {BRIDGE_TABLE} neighbour_discovery ip6 length > {ND_LENGTH} drop
add rule {BRIDGE_TABLE} neighbour_discovery ip6 length {ND_LENGTH} @th,192,8 {{ 1, 2 }} \
iifname . @th,208,48 != @nd_lladdrs drop
add rule {BRIDGE_TABLE} neighbour_discovery icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd_targets drop
"""

# The IPv6 table, made with the first pod of a network with IPv6: the IPv4 table's chains, on
# IPv6. No route_localnet for IPv6 exists, so ::1 is not published (output returns before
# publish: a client sees "connection refused" at once, and tries 127.0.0.1) and never masqueraded.
RULES6 = f"""\
add table {TABLE6}
add set {TABLE6} bridges {{ type ifname; }}
add set {TABLE6} subnets {{ type ipv6_addr; flags interval; }}
add set {TABLE6} intra {{ type ifname . ifname; }}
add map {TABLE6} published {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}
add map {TABLE6} published_at {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}
add chain {TABLE6} publish
add chain {TABLE6} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain {TABLE6} output {{ type nat hook output priority -100; policy accept; }}
add chain {TABLE6} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain {TABLE6} forward {{ type filter hook forward priority filter; policy accept; }}
add chain {TABLE6} from_bridges {{ type filter hook prerouting priority raw; policy accept; }}
flush chain {TABLE6} publish
flush chain {TABLE6} prerouting
flush chain {TABLE6} output
flush chain {TABLE6} postrouting
flush chain {TABLE6} forward
flush chain {TABLE6} from_bridges
add rule {TABLE6} publish meta l4proto {{ tcp, udp }} dnat to ip6 daddr . meta l4proto . th dport map @published_at
add rule {TABLE6} publish meta l4proto {{ tcp, udp }} dnat to meta l4proto . th dport map @published
add rule {TABLE6} prerouting fib daddr type local jump publish
add rule {TABLE6} output ip6 daddr ::1 return
add rule {TABLE6} output fib daddr type local jump publish
add rule {TABLE6} postrouting oifname @bridges ct status dnat ip6 saddr @subnets masquerade
add rule {TABLE6} postrouting ip6 saddr @subnets oifname != @bridges masquerade
add rule {TABLE6} forward oifname @bridges ct state established,related accept
add rule {TABLE6} forward oifname @bridges ct status dnat accept
add rule {TABLE6} forward iifname . oifname @intra accept
add rule {TABLE6} forward oifname @bridges drop
add rule {TABLE6} from_bridges iifname @bridges ip6 daddr ::1 drop
add rule {TABLE6} from_bridges iifname @bridges ip6 saddr ::1 drop
"""


# A set named after the checksum of RULES, with one element: adding to it fails in a table that
# these rules did not make (none at all after `nft flush ruleset`, or another version of sdrun's).
MARK = f"rules_{zlib.crc32(RULES.encode()):08x}"
MARK_ELEMENT = f'add element {TABLE} {MARK} {{ "sdrun" }}\n'
SKELETON = f"{RULES}add set {TABLE} {MARK} {{ type ifname; }}\n{MARK_ELEMENT}"  # idempotent
MARK6 = f"rules_{zlib.crc32(RULES6.encode()):08x}"
MARK6_ELEMENT = f'add element {TABLE6} {MARK6} {{ "sdrun" }}\n'
SKELETON6 = f"{RULES6}add set {TABLE6} {MARK6} {{ type ifname; }}\n{MARK6_ELEMENT}"


def network_elements(network: Network, subnet: str = "") -> list[tuple[str, str]]:
    """(set, element) pairs that make a network's bridge known to the rules (of the IPv6 table
    with subnet=network.subnet6)."""
    bridge = json.dumps(network.bridge)
    return [("bridges", bridge), ("subnets", subnet or network.subnet), ("intra", f"{bridge} . {bridge}")]


def port_elements(address: str, ports: Iterable[PortMapping]) -> list[tuple[str, str, str]]:
    """(map, key, value) triples that forward a pod's published ports to its address: the IPv4
    table's, or with an IPv6 address the IPv6 table's. A port on every address is in both."""
    ipv6 = ":" in address
    elements = []
    for port in ports:
        if port.host_ip and port.is_ipv6 != ipv6:
            continue  # an address of the other family's table
        value = f"{address} . {port.container_port}"
        if port.host_ip and port.host_ip != ANY_IPV6:
            elements.append(("published_at", f"{port.host_ip} . {port.protocol} . {port.host_port}", value))
        else:
            elements.append(("published", f"{port.protocol} . {port.host_port}", value))
    return elements


def source_element(veth: str, address: str) -> str:
    """What a pod may send from: its veth's peer's MAC and its lease's address, on its veth alone."""
    return f"{json.dumps(veth)} . {peer_mac(veth)} . {address}"


def link_local(mac: str) -> str:
    """The link-local address a kernel gives an interface with this MAC (EUI-64, addr_gen_mode 0,
    which sdrun sets on a pod's eth0)."""
    octets = [int(part, 16) for part in mac.split(":")]
    eui64 = [octets[0] ^ 2, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
    return "fe80::" + ":".join(f"{eui64[index] << 8 | eui64[index + 1]:x}" for index in range(0, 8, 2))


def _as_integer(address: str) -> str:
    """An IPv6 address as the hex integer a raw payload (@th,64,128) is compared with."""
    import socket  # here: a tear-down of a pod without IPv6 never needs it

    return "0x" + socket.inet_pton(socket.AF_INET6, address).hex()


def source6_elements(veth: str, address6: str) -> list[tuple[str, str]]:
    """(set, element) pairs that let a pod on a network with IPv6 send from its IPv6 address, its
    link-local one, and :: (duplicate address detection), and name only those in neighbour discovery."""
    mac = peer_mac(veth)
    interface = json.dumps(veth)
    own = (address6, link_local(mac))
    return [
        *(("sources6", f"{interface} . {mac} . {address}") for address in (*own, "::")),
        *(("nd_targets", f"{interface} . {_as_integer(address)}") for address in own),
        ("nd_lladdrs", f"{interface} . 0x{mac.replace(':', '')}"),
    ]


def source_commands(verb: str, veth: str, address: str, address6: str = "") -> str:
    """Add or delete the elements that filter what a pod sends: its veth in @pods, its source in
    @sources, and with address6 its IPv6 elements."""
    elements = [("pods", json.dumps(veth)), ("sources", source_element(veth, address))]
    if address6:
        elements += source6_elements(veth, address6)
    return "".join(f"{verb} element {BRIDGE_TABLE} {name} {{ {element} }}\n" for name, element in elements)


def add(network: Network, address: str, ports: Iterable[PortMapping], veth: str = "", address6: str = "") -> None:
    """Make a pod's network, ports and source filter (with veth) known to the rules; the skeleton
    too, if the table lacks it (and the IPv6 table's, for a pod with address6)."""
    start_add(network, address, ports, veth, address6)()


def start_add(
    network: Network, address: str, ports: Iterable[PortMapping], veth: str = "", address6: str = ""
) -> Callable[[], None]:
    """add(), begun: nft works on it while the caller goes on (a pod's set-up makes its veth pair
    meanwhile). Call the result, once or more, to wait for it to be done (or to fail)."""
    elements = element_commands(network, address, ports, address6)
    if veth:
        elements += source_commands("add", veth, address, address6)
    marks, skeletons = (MARK_ELEMENT + MARK6_ELEMENT, SKELETON + SKELETON6) if address6 else (MARK_ELEMENT, SKELETON)
    marked = unplug.NftRun(marks + elements)  # fails unless the tables hold these rules
    waited = False

    def finish() -> None:
        nonlocal waited
        if waited:
            return
        waited = True
        try:
            marked.wait()
        except SdrunError:
            apply(skeletons + elements)

    return finish


def element_commands(network: Network, address: str, ports: Iterable[PortMapping], address6: str = "") -> str:
    """The network's elements and the pod's ports (in the IPv6 table too, with address6)."""
    ports = tuple(ports)
    tables = [(TABLE, network.subnet, address)] + ([(TABLE6, network.subnet6, address6)] if address6 else [])
    lines = []
    for table, subnet, target in tables:
        lines += [
            f"add element {table} {name} {{ {element} }}\n" for name, element in network_elements(network, subnet)
        ]
        lines += [
            f"add element {table} {name} {{ {key} : {value} }}\n" for name, key, value in port_elements(target, ports)
        ]
    return "".join(lines)


def remove_port_commands(address: str, ports: Iterable[PortMapping], address6: str = "") -> str:
    ports = tuple(ports)
    commands = remove_elements_commands(port_elements(address, ports))
    if address6 and (elements := port_elements(address6, ports)):
        commands += _declare_table6() + remove_elements_commands(elements, TABLE6)
    return commands


def _declare_table6() -> str:
    """The IPv6 table's sets and maps, declared (a no-op when they exist) so that removing their
    elements cannot fail after `nft flush ruleset`."""
    return "".join(line + "\n" for line in RULES6.splitlines() if line.startswith(("add table", "add set", "add map")))


def remove_source_commands(veth: str, address: str, address6: str = "") -> str:
    """Remove a pod's source elements. The table and sets are declared first (a no-op when they
    exist): after `nft flush ruleset` there is nothing to remove, and the removal must not fail."""
    names = ("pods", "sources", *(("sources6", "nd_targets", "nd_lladdrs") if address6 else ()))
    return (
        f"add table {BRIDGE_TABLE}\n"
        + "".join(f"add set {BRIDGE_TABLE} {name} {{ {BRIDGE_SETS[name]} }}\n" for name in names)
        + source_commands("add", veth, address, address6)
        + source_commands("delete", veth, address, address6)
    )


def remove_network_commands(network: Network, ipv6_table: bool = True) -> str:
    """Remove a network's elements; from the IPv6 table too if it has IPv6 and ipv6_table (the
    table exists: a network none of whose pods ran has nothing there, and needs no empty table)."""
    ipv6 = bool(network.subnet6) and ipv6_table
    tables = [(TABLE, network.subnet)] + ([(TABLE6, network.subnet6)] if ipv6 else [])
    lines = [_declare_table6()] if ipv6 else []
    for table, subnet in tables:
        for name, element in network_elements(network, subnet):
            lines.append(f"add element {table} {name} {{ {element} }}\n")
            lines.append(f"delete element {table} {name} {{ {element} }}\n")
    return "".join(lines)


def remove_table_commands() -> str:
    return "".join(f"add table {table}\ndelete table {table}\n" for table in (TABLE, TABLE6, BRIDGE_TABLE))


def table_exists(table: str = TABLE) -> bool:
    return subprocess.run(["nft", "list", "table", *table.split()], capture_output=True, check=False).returncode == 0


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


def remove_elements_commands(elements: Iterable[tuple[str, str, str]], table: str = TABLE) -> str:
    lines = []
    for name, key, value in elements:
        lines.append(f"add element {table} {name} {{ {key} : {value} }}\n")
        lines.append(f"delete element {table} {name} {{ {key} }}\n")
    return "".join(lines)
