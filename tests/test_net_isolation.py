"""Pods on a bridge network against the host and each other (docs/networking.md, "Isolation between
pods and from the host"): an attacker pod given NET_RAW back sends hand-made frames with
tests/programs/netattack.c, and what it aims at (the host's loopback services, the host's neighbour
entry of another pod, a source address not its own, other pods' IPv6 configuration) stays out of reach.

Only loopback, the harness's own bridge and addresses inside namespaces these tests made are contacted."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrun.net import config
from sdrun.net.config import Network
from tests.conftest import Sdrun, needs_systemd, unique_name
from tests.test_kvm import KVM, VM_TIMEOUT, needs_vm
from tests.test_namespace import PROGRAMS
from tests.test_net_pods import clean_host, fetch, free_ports, pod_json, server

__all__ = ["clean_host"]  # a fixture, used by name
pytestmark = needs_systemd
ATTACKER_PREFIX = "20010db8005d"  # 2001:db8:5d::/64, the prefix netattack's advertisements offer, as /proc/net shows it


@pytest.fixture(scope="session")
def netattack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/programs/netattack.c, linked statically so that it runs in the busybox rootfs."""
    binary = tmp_path_factory.mktemp("programs") / "netattack"
    source = PROGRAMS / "netattack.c"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True)
    return binary


def attack(sdrun: Sdrun, rootfs: Path, netattack: Path, script: str, *options: str) -> str:
    """Run script (its commands call /netattack) in a pod on the default network, with NET_RAW
    (options replace that). In script, $gw is the gateway's MAC as the pod's ARP cache has it:
    where a pod sends to the host."""
    gateway = default_network(sdrun).gateway
    resolve = f"ping -c 1 -W 2 {gateway} >/dev/null; gw=$(awk '$1 == \"{gateway}\" {{print $4}}' /proc/net/arp)"
    options = options or ("--cap-add", "NET_RAW")
    command = ("run", "--rm", "--net", "default", *options, "-v", f"{netattack}:/netattack:ro")
    shell = ("/bin/sh", "-ec", f"{resolve}; {script}")
    return sdrun(*command, "--rootfs", str(rootfs), "--", *shell, timeout=VM_TIMEOUT).stdout


def default_network(sdrun: Sdrun) -> Network:
    """The default network, once a pod has made it."""
    return config.load(sdrun.root, "default")


@contextlib.contextmanager
def listening(address: str, port: int) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A UDP socket and a TCP listener of the host, bound to address:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        for sock in (udp, tcp):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.settimeout(1.0)
        tcp.listen()
        yield udp, tcp


def received(udp: socket.socket) -> list[tuple[bytes, str]]:
    """Every datagram that has arrived on udp: (payload, source address)."""
    datagrams = []
    with contextlib.suppress(TimeoutError):
        while True:
            payload, (source, _) = udp.recvfrom(1024)
            datagrams.append((payload, source))
    return datagrams


def accepted(tcp: socket.socket) -> bool:
    """Whether a connection came to the listener tcp (within its timeout)."""
    try:
        connection, _ = tcp.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


def test_a_pod_reaches_no_host_service_on_127_0_0_1_and_a_published_port_answers_there(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    """The CVE-2020-8558 pattern: route_localnet=1 on the bridge (for published ports on 127.0.0.1)
    would route what a pod sends to 127.0.0.1 through the gateway's MAC to the host's loopback."""
    port, published = free_ports(2)
    name = unique_name("web")
    server(clean_host, rootfs, name, "--net", "default", "-p", f"127.0.0.1:{published}:8000")
    assert fetch(f"http://127.0.0.1:{published}/") == f"hello from {name}\n"
    with listening("127.0.0.1", port) as (udp, tcp):
        script = f"/netattack udp $gw own 127.0.0.1 {port}; /netattack syn $gw 127.0.0.1 {port}"
        answer = attack(clean_host, rootfs, netattack, script)
        reached = (answer, received(udp), accepted(tcp))
    assert reached == ("no answer\n", [], False)  # no SYN-ACK came back, nothing arrived
    assert fetch(f"http://127.0.0.1:{published}/") == f"hello from {name}\n"


def spoofing_pod(sdrun: Sdrun, rootfs: Path, netattack: Path, *options: str) -> tuple[list[tuple[bytes, str]], str]:
    """What the host receives of the three datagrams a pod sends it, from its own address, a
    neighbour's and one off the network; and the neighbour's address."""
    victim = unique_name("victim")
    server(sdrun, rootfs, victim, "--net", "default")
    victim_address = str(pod_json(sdrun, victim)["ip"])
    network = default_network(sdrun)
    (port,) = free_ports(1)
    with listening("0.0.0.0", port) as (udp, _):
        script = (
            f"/netattack udp $gw own {network.gateway} {port}; "
            f"/netattack udp $gw {victim_address} {network.gateway} {port}; "
            f"/netattack udp $gw 192.0.2.7 {network.gateway} {port}"
        )
        attack(sdrun, rootfs, netattack, script, *options)
        return received(udp), victim_address


def test_a_pod_sends_only_from_its_own_address(clean_host: Sdrun, rootfs: Path, netattack: Path) -> None:
    datagrams, victim_address = spoofing_pod(clean_host, rootfs, netattack)
    assert len(datagrams) == 1, datagrams  # what the pod sent from its own address, alone
    assert datagrams[0][0] == b"sdrun-leak" and datagrams[0][1] not in (victim_address, "192.0.2.7")


@needs_vm
def test_a_kvm_guest_on_a_network_sends_only_from_its_own_address(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    """A guest is root in a kernel of its own: only the host side of its pod's veth, which its
    frames leave by, can hold it to its lease. (Its NIC has the MAC of the pod's eth0.)"""
    datagrams, victim_address = spoofing_pod(clean_host, rootfs, netattack, *KVM)
    assert len(datagrams) == 1, datagrams
    assert datagrams[0][0] == b"sdrun-leak" and datagrams[0][1] not in (victim_address, "192.0.2.7")


def neighbour_mac(network: Network, address: str) -> str:
    shown = subprocess.run(
        ["ip", "-j", "neigh", "show", "to", address, "dev", network.bridge],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries: list[dict[str, str]] = json.loads(shown or "[]")
    return entries[0].get("lladdr", "") if entries else ""


def test_a_pod_cannot_take_over_the_hosts_neighbour_entry_of_another(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    victim = unique_name("victim")
    server(clean_host, rootfs, victim, "--net", "default")
    victim_address = str(pod_json(clean_host, victim)["ip"])
    assert fetch(f"http://{victim_address}:8000/") == f"hello from {victim}\n"  # the host resolves its MAC
    network = default_network(clean_host)
    victim_mac = neighbour_mac(network, victim_address)
    assert victim_mac
    attack(clean_host, rootfs, netattack, f"/netattack arp $gw {network.gateway} {victim_address}")
    assert neighbour_mac(network, victim_address) == victim_mac
    assert fetch(f"http://{victim_address}:8000/") == f"hello from {victim}\n"


def ipv6_state(text: str) -> tuple[bool, bool]:
    """From /proc/net/if_inet6 then /proc/net/ipv6_route: whether the attacker's prefix shows (a
    SLAAC address or its route), and whether any route has a next hop (pods have no IPv6 router)."""
    routes = [line.split() for line in text.splitlines() if len(line.split()) == 10]
    return ATTACKER_PREFIX in text, any(set(fields[4]) != {"0"} for fields in routes)


def test_a_router_advertisement_from_a_pod_configures_no_other_pod_and_not_the_host(
    clean_host: Sdrun, rootfs: Path, netattack: Path
) -> None:
    if not Path("/proc/net/if_inet6").exists():
        pytest.skip("the kernel has no IPv6")
    victim = unique_name("victim")
    clean_host("run", "-d", "--name", victim, "--net", "default", "--rootfs", str(rootfs), "--", "sleep", "120")
    show = ("/bin/sh", "-c", "cat /proc/net/if_inet6 /proc/net/ipv6_route; cat /proc/sys/net/ipv6/conf/eth0/accept_ra")
    attack(clean_host, rootfs, netattack, "/netattack ra; sleep 1")
    inside = clean_host("enter", victim, "--", *show).stdout
    host = Path("/proc/net/if_inet6").read_text() + Path("/proc/net/ipv6_route").read_text()
    # Neither the victim nor the host took the prefix or a router; accept_ra=0 in the pod's namespace.
    assert (ipv6_state(inside), ipv6_state(host)[0], inside.endswith("\n0\n")) == ((False, False), False, True), (
        inside + host
    )
