"""Pods on a network made with --ipv6, under the real systemd (docs/networking.md, "IPv6"): a port
published on the host's IPv6 addresses, and the same isolation as IPv4's. An attacker pod given
NET_RAW back sends hand-made frames with tests/programs/netattack.c.

The host's IPv6 address is on a veth pair of the test's own, whose other end is a namespace
standing in for another host. Only those, loopback and the harness's bridges are contacted."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrun.net import config, ipam, nft, peer_mac
from sdrun.net.config import Network
from tests.conftest import Sdrun, needs_systemd, unique_name, wait_for
from tests.test_kvm import VM_TIMEOUT
from tests.test_net_isolation import ATTACKER_PREFIX, ipv6_state, netattack
from tests.test_net_pods import clean_host, fetch, free_ports, host_state, server

__all__ = ["clean_host", "netattack"]  # fixtures, used by name
pytestmark = [
    needs_systemd,
    pytest.mark.skipif(not Path("/proc/net/if_inet6").exists(), reason="the kernel has no IPv6"),
]
HOST_ADDRESS6, REMOTE_ADDRESS6 = "fd5d:9::1", "fd5d:9::2"  # the host's and the other host's, on their link
FOREIGN_ADDRESS6 = "fd5d:dead::7"  # on no network at all


@pytest.fixture
def remote_host6() -> Iterator[str]:
    """Another host on a link of this one, reached over IPv6 alone: a network namespace of the
    test's own behind a veth pair. Yields the namespace (this host is HOST_ADDRESS6 on the link)."""
    namespace, link = unique_name("remote"), unique_name("sdt6")
    steps = (
        ["netns", "add", namespace],
        ["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace],
        ["-6", "address", "add", f"{HOST_ADDRESS6}/64", "dev", link, "nodad"],
        ["link", "set", link, "up"],
        ["-n", namespace, "-6", "address", "add", f"{REMOTE_ADDRESS6}/64", "dev", "eth0", "nodad"],
        ["-n", namespace, "link", "set", "eth0", "up"],
        ["-n", namespace, "link", "set", "lo", "up"],
    )
    try:
        for step in steps:
            subprocess.run(["ip", *step], check=True)
        yield namespace
    finally:
        subprocess.run(["ip", "link", "delete", link], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


def ipv6_network(sdrun: Sdrun) -> Network:
    """A network made with --ipv6 (its IPv6 subnet its own ULA /64)."""
    name = unique_name("six")
    sdrun("network", "create", name, "--subnet", "10.91.0.0/24", "--ipv6")
    return config.load(sdrun.root, name)


def address6_of(sdrun: Sdrun, network: Network, pod: str) -> str:
    return next(lease.address6 for lease in ipam.leases(sdrun.root, network.name) if lease.name == pod)


def attack(sdrun: Sdrun, rootfs: Path, netattack: Path, network: Network, script: str, *options: str) -> str:
    """Run script (its commands call /netattack) in a pod with NET_RAW on network; $gw is the
    bridge's MAC, as the pod's ARP cache has it."""
    gateway = network.gateway
    resolve = f"ping -c 1 -W 2 {gateway} >/dev/null; gw=$(awk '$1 == \"{gateway}\" {{print $4}}' /proc/net/arp)"
    command = ("run", "--rm", "--net", network.name, "--cap-add", "NET_RAW", *options)
    volume = ("-v", f"{netattack}:/netattack:ro", "--rootfs", str(rootfs))
    return sdrun(*command, *volume, "--", "/bin/sh", "-ec", f"{resolve}; {script}", timeout=VM_TIMEOUT).stdout


@contextlib.contextmanager
def udp_listener6(address: str, port: int) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        udp.bind((address, port))
        udp.settimeout(1.0)
        yield udp


def received(udp: socket.socket) -> list[tuple[bytes, str]]:
    """Every datagram that has arrived on the IPv6 socket udp: (payload, source address)."""
    datagrams = []
    with contextlib.suppress(TimeoutError):
        while True:
            payload, (source, *_) = udp.recvfrom(1024)
            datagrams.append((payload, source))
    return datagrams


def remote_get(namespace: str, url: str) -> str:
    """GET url from the other host, retrying while the pod's server is not yet listening."""
    get = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=2).read().decode(), end='')"
    bodies: list[str] = []

    def fetched() -> bool:
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", get], capture_output=True, text=True, check=False
        )
        bodies.append(result.stdout)
        return result.returncode == 0

    wait_for(fetched, timeout=10)
    return bodies[-1]


def refused_at_once(address: str, port: int) -> bool:
    """Whether a TCP connection to address:port is refused (rather than lost, or answered)."""
    with socket.socket(socket.AF_INET6) as sock:
        sock.settimeout(2)
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def test_a_published_port_answers_on_the_hosts_ipv6_addresses_and_leaves_nothing(
    clean_host: Sdrun, rootfs: Path, remote_host6: str
) -> None:
    network = ipv6_network(clean_host)
    port, at_address = free_ports(2)
    name = unique_name("web")
    published = ("-p", f"{port}:8000", "-p", f"[{HOST_ADDRESS6}]:{at_address}:8000")
    server(clean_host, rootfs, name, "--net", network.name, *published)
    hello = f"hello from {name}\n"
    address6 = address6_of(clean_host, network, name)
    assert address6 == network.address6(str(json.loads(clean_host("list", "--json").stdout)[0]["ip"]))
    # From the host itself (nat output), from another host (nat prerouting), the pod's own address.
    assert fetch(f"http://[{HOST_ADDRESS6}]:{port}/") == hello
    assert fetch(f"http://[{HOST_ADDRESS6}]:{at_address}/") == hello
    assert remote_get(remote_host6, f"http://[{HOST_ADDRESS6}]:{port}/") == hello
    assert remote_get(remote_host6, f"http://[{HOST_ADDRESS6}]:{at_address}/") == hello
    assert fetch(f"http://[{address6}]:8000/") == hello
    assert fetch(f"http://127.0.0.1:{port}/") == hello  # IPv4 as before
    # ::1 is not forwarded (the kernel routes it to no other interface): refused, not lost.
    assert refused_at_once("::1", port)
    show = "cat /proc/net/if_inet6; for s in accept_ra autoconf; do cat /proc/sys/net/ipv6/conf/eth0/$s; done"
    inside = clean_host("enter", name, "--", "/bin/sh", "-c", show).stdout
    assert _expanded(address6) in inside, inside
    assert inside.endswith("0\n0\n"), inside  # accept_ra=0 and autoconf=0 on eth0, as on IPv4-only networks

    clean_host("rm", "-f", name)
    clean_host("gc")
    state = host_state() + subprocess.run(["ip", "-6", "route"], capture_output=True, text=True, check=True).stdout
    prefix = network.subnet6.partition("::")[0]
    assert "table ip6 sdrun" not in state and prefix not in state and network.bridge not in state, state
    assert refused_at_once(HOST_ADDRESS6, port)  # the port forwards nowhere


def _expanded(address: str) -> str:
    """An IPv6 address as /proc/net/if_inet6 shows it: 32 hex digits."""
    return socket.inet_pton(socket.AF_INET6, address).hex()


def test_an_ipv6_port_needs_a_network_with_ipv6_and_loopback_is_refused(clean_host: Sdrun, rootfs: Path) -> None:
    (port,) = free_ports(1)
    run = ("run", "--rm", "--rootfs", str(rootfs), "--", "true")
    no_ipv6 = clean_host(*run[:2], "-p", f"[{FOREIGN_ADDRESS6}]:{port}:80", *run[2:], check=False)
    assert no_ipv6.returncode != 0 and "network 'default' has no IPv6" in no_ipv6.stderr, no_ipv6.stderr
    loopback = clean_host(*run[:2], "-p", f"[::1]:{port}:80", *run[2:], check=False)
    assert loopback.returncode != 0 and "on [::1]" in loopback.stderr, loopback.stderr
    assert not list((clean_host.root / "net").glob("*/leases/*"))


def test_a_pod_sends_ipv6_only_from_its_own_addresses(clean_host: Sdrun, rootfs: Path, netattack: Path) -> None:
    network = ipv6_network(clean_host)
    victim = unique_name("victim")
    server(clean_host, rootfs, victim, "--net", network.name)
    victim_address6 = address6_of(clean_host, network, victim)
    (port,) = free_ports(1)
    with udp_listener6("::", port) as udp:
        sources = ("own", victim_address6, FOREIGN_ADDRESS6, "::")
        script = "; ".join(f"/netattack udp6 $gw {source} {network.gateway6} {port}" for source in sources)
        attack(clean_host, rootfs, netattack, network, script)
        datagrams = received(udp)
    assert len(datagrams) == 1, datagrams  # what the pod sent from its own address, alone
    assert datagrams[0][0] == b"sdrun-leak"
    assert datagrams[0][1] not in (victim_address6, FOREIGN_ADDRESS6, "::")
    assert datagrams[0][1].startswith(network.subnet6.partition("::")[0])


def neighbour6_mac(network: Network, address: str) -> str:
    shown = subprocess.run(
        ["ip", "-6", "-j", "neigh", "show", "to", address, "dev", network.bridge],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries: list[dict[str, str]] = json.loads(shown or "[]")
    return entries[0].get("lladdr", "") if entries else ""


def test_a_pod_cannot_take_over_the_hosts_ipv6_neighbour_entry_of_another(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    """The ARP spoofing test's twin: neighbour advertisements name only the sender's own addresses."""
    network = ipv6_network(clean_host)
    victim = unique_name("victim")
    server(clean_host, rootfs, victim, "--net", network.name)
    victim_address6 = address6_of(clean_host, network, victim)
    assert fetch(f"http://[{victim_address6}]:8000/") == f"hello from {victim}\n"  # the host resolves its MAC
    victim_mac = neighbour6_mac(network, victim_address6)
    assert victim_mac
    attack(clean_host, rootfs, netattack, network, f"/netattack na {victim_address6}")
    assert neighbour6_mac(network, victim_address6) == victim_mac
    assert fetch(f"http://[{victim_address6}]:8000/") == f"hello from {victim}\n"


def test_a_pod_cannot_point_its_own_ipv6_neighbour_entry_at_another_pods_mac(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    """The twin of ARP's sender-MAC check: the link-layer address option of an advertisement is
    the sender's own MAC, or the host would send what it has for the attacker to the victim."""
    network = ipv6_network(clean_host)
    victim, attacker = unique_name("victim"), unique_name("attacker")
    server(clean_host, rootfs, victim, "--net", network.name)
    victim_mac = peer_mac(
        next(lease.veth for lease in ipam.leases(clean_host.root, network.name) if lease.name == victim)
    )
    gateway = network.gateway
    script = (
        f"ping -c 1 -W 2 {gateway} >/dev/null; ping -c 1 -W 2 {network.gateway6} >/dev/null; "
        f"/netattack na own {victim_mac}; touch /done; exec sleep 120"
    )  # the host answers the ping: it has a neighbour entry of the attacker to change
    volume = ("-v", f"{netattack}:/netattack:ro", "--cap-add", "NET_RAW", "--rootfs", str(rootfs))
    clean_host("run", "-d", "--name", attacker, "--net", network.name, *volume, "--", "/bin/sh", "-c", script)
    wait_for(lambda: clean_host("enter", attacker, "--", "test", "-e", "/done", check=False).returncode == 0)
    lease = next(lease for lease in ipam.leases(clean_host.root, network.name) if lease.name == attacker)
    assert neighbour6_mac(network, lease.address6) == peer_mac(lease.veth)


def test_a_router_advertisement_from_a_pod_reaches_no_pod_on_an_ipv6_network(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    """The victim listens to router advertisements (accept_ra=1, which sdrun never sets): only
    the bridge filter stands between it and the attacker's prefix and route."""
    network = ipv6_network(clean_host)
    victim = unique_name("victim")
    listens = ("--sysctl", "net.ipv6.conf.eth0.accept_ra=1")
    clean_host(
        "run", "-d", "--name", victim, "--net", network.name, *listens, "--rootfs", str(rootfs), "--", "sleep", "120"
    )
    show = ("/bin/sh", "-c", "cat /proc/net/if_inet6 /proc/net/ipv6_route; cat /proc/sys/net/ipv6/conf/eth0/accept_ra")
    attack(clean_host, rootfs, netattack, network, "/netattack ra; sleep 1")
    inside = clean_host("enter", victim, "--", *show).stdout
    host = Path("/proc/net/if_inet6").read_text() + Path("/proc/net/ipv6_route").read_text()
    routes_via_link_local = [
        line for line in inside.splitlines() if len(line.split()) == 10 and line.split()[4].startswith("fe80")
    ]
    assert inside.endswith("\n1\n"), inside  # the victim would take what reached it
    assert (ipv6_state(inside)[0], routes_via_link_local, ATTACKER_PREFIX in host) == (False, [], False), inside


def test_a_pod_reaches_no_host_service_on_ipv6_loopback(clean_host: Sdrun, rootfs: Path, netattack: Path) -> None:
    """The twin of the 127.0.0.1 test. The kernel itself drops what arrives for ::1 on another
    interface than lo; the bridge filter and from_bridges drop it before."""
    network = ipv6_network(clean_host)
    (port,) = free_ports(1)
    with udp_listener6("::1", port) as udp:
        script = f"/netattack udp6 $gw own ::1 {port}; /netattack udp6 $gw ::1 ::1 {port}"
        attack(clean_host, rootfs, netattack, network, script)
        assert received(udp) == []


def test_pods_without_ipv6_make_no_ipv6_table_and_gc_makes_none(clean_host: Sdrun, rootfs: Path) -> None:
    """The default network (no IPv6) runs as before; a network with IPv6 that no pod has used
    has nothing in nftables, and gc retiring it must not make an empty IPv6 table."""
    ipv6_network(clean_host)
    name = unique_name("plain")
    server(clean_host, rootfs, name, "--net", "default")
    clean_host("gc")  # retires the unused network, the default one's pod running
    state = host_state()
    assert "table ip sdrun" in state and "table ip6 sdrun" not in state, state
    clean_host("rm", "-f", name)


def test_a_redirect_from_a_pod_reaches_no_other_pod(clean_host: Sdrun, rootfs: Path, netattack: Path) -> None:
    """Seen by the victim's own packet socket, before its kernel judges it (which would refuse a
    redirect whose source is not its first hop's: the bridge filter is what keeps it off the wire)."""
    network = ipv6_network(clean_host)
    victim = unique_name("victim")
    listen = "touch /ready; /netattack sniff 137 4 > /seen; exec sleep 120"
    volume = ("-v", f"{netattack}:/netattack:ro", "--cap-add", "NET_RAW", "--rootfs", str(rootfs))
    clean_host("run", "-d", "--name", victim, "--net", network.name, *volume, "--", "/bin/sh", "-c", listen)

    def has(path: str) -> bool:
        return (
            clean_host("enter", victim, "--", "test", "-s" if path == "/seen" else "-e", path, check=False).returncode
            == 0
        )

    wait_for(lambda: has("/ready"))
    lease = next(lease for lease in ipam.leases(clean_host.root, network.name) if lease.name == victim)
    victim_mac = peer_mac(lease.veth)
    script = f"/netattack redirect {victim_mac} {nft.link_local(victim_mac)} ll {REMOTE_ADDRESS6}"
    attack(clean_host, rootfs, netattack, network, script)
    wait_for(lambda: has("/seen"))
    assert clean_host("enter", victim, "--", "cat", "/seen").stdout == "0\n"
