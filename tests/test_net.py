"""Networking pieces without a systemd: port parsing, leases, the files pods see, the nftables
commands, subnet checks, netlink, and the promise that commands without a network never import it."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrun.errors import SdrunError, SpecError, describe
from sdrun.net import config, ipam, nft, peer_mac, unplug, veth_name
from sdrun.net.config import Network
from sdrun.net.ipam import Lease
from sdrun.net.ports import PortMapping
from sdrun.paths import NETNS_DIR, Paths
from sdrun.spec import check_settings
from sdrun.specbuild import build_spec
from tests.conftest import SDRUN, Sdrun, needs_systemd

NETWORK = Network("web", "10.123.0.0/29", "sdrun7")


def lease(name: str, address: str, *ports: str) -> Lease:
    return Lease(name, name, name, "web", address, f"sdrun-{name}", f"sdv{name}", tuple(map(PortMapping.parse, ports)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8001:8000", PortMapping(8001, 8000)),
        ("127.0.0.1:8001:8000", PortMapping(8001, 8000, "tcp", "127.0.0.1")),
        ("0.0.0.0:53:5353/udp", PortMapping(53, 5353, "udp")),
        ("8080:80/tcp", PortMapping(8080, 80)),
    ],
)
def test_port_mappings_parse_and_print_back(text: str, expected: PortMapping) -> None:
    assert PortMapping.parse(text) == expected
    assert PortMapping.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["8000", "0:80", "80:70000", "a:80", "1.2.3:80:80", "80:80/sctp", "::1:80:80"])
def test_bad_port_mappings_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="invalid port"):
        PortMapping.parse(text)


def test_ports_need_a_network() -> None:
    settings = check_settings({"rootfs": "/", "port": ["8001:80"]}, "test")
    for alone in ({"net": "none"}, {"net": "host"}, {"stage1": "fly"}):
        with pytest.raises(SpecError, match="--port needs a network"):
            build_spec(settings | alone, default_name="p", default_stage1="namespace")
    spec = build_spec(settings, default_name="p", default_stage1="namespace")  # the default network
    assert (spec.net, spec.ports) == ("default", (PortMapping(8001, 80),))


def test_each_stage1_has_its_default_network() -> None:
    settings = check_settings({"rootfs": "/"}, "test")
    defaults = {name: build_spec(settings | {"stage1": name}, default_name="p", default_stage1="namespace").net
                for name in ("namespace", "fly", "kvm")}  # fmt: skip
    assert defaults == {"namespace": "default", "fly": "host", "kvm": "none"}


def test_port_clashes_follow_protocol_and_address() -> None:
    any_address = PortMapping.parse("8001:80")
    assert any_address.clashes_with(PortMapping.parse("127.0.0.1:8001:81"))
    assert not any_address.clashes_with(PortMapping.parse("8001:80/udp"))
    assert not PortMapping.parse("127.0.0.1:8001:80").clashes_with(PortMapping.parse("127.0.0.2:8001:80"))
    with pytest.raises(SdrunError, match="already published by pod 'a'"):
        ipam.check_ports((any_address,), [lease("a", "10.123.0.2", "127.0.0.1:8001:8000")])
    with pytest.raises(SdrunError, match="published twice"):
        ipam.check_ports((any_address, any_address), [])


def test_addresses_skip_the_gateway_and_leases_until_none_is_left() -> None:
    assert NETWORK.gateway == "10.123.0.1" and NETWORK.prefixlen == 29
    taken: set[str] = set()
    for expected in ("10.123.0.2", "10.123.0.3", "10.123.0.4", "10.123.0.5", "10.123.0.6"):
        address = ipam.free_address(NETWORK, taken)
        assert address == expected
        taken.add(address)
    with pytest.raises(SdrunError, match="no free address"):
        ipam.free_address(NETWORK, taken)
    assert ipam.free_address(NETWORK, taken - {"10.123.0.3"}) == "10.123.0.3"


def test_leases_round_trip_through_their_files(tmp_path: Path) -> None:
    written = lease("a", "10.123.0.2", "8001:8000", "127.0.0.1:53:53/udp")
    ipam.write_lease(tmp_path, written)
    assert ipam.read_lease(tmp_path, "web", "a") == written
    assert ipam.all_leases(tmp_path) == [written]
    ipam.remove_lease(tmp_path, written)
    assert ipam.all_leases(tmp_path) == [] and ipam.read_lease(tmp_path, "web", "a") is None


def test_hosts_file_names_every_pod_once() -> None:
    pods = [lease("b", "10.123.0.10"), lease("a", "10.123.0.9"), Lease("c", "c", "box", "web", "10.123.0.3", "", "")]
    lines = ipam.hosts_file(pods).splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[2:] == ["10.123.0.3\tc box", "10.123.0.9\ta", "10.123.0.10\tb"]


def test_resolv_conf_drops_loopback_resolvers() -> None:
    host = "nameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.1\nsearch example.org\noptions edns0\n"
    assert ipam.resolv_conf(host) == "nameserver 10.0.0.1\nsearch example.org\noptions edns0\n"


def test_files_are_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    unplug.rewrite_in_place(path, "a long first version\n")
    inode = path.stat().st_ino
    unplug.rewrite_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode  # a bind mount keeps seeing it


def test_the_lean_tear_down_finds_the_files_where_sdrun_paths_puts_them(tmp_path: Path) -> None:
    paths, root = Paths(tmp_path), str(tmp_path)
    assert unplug.network_dir(root, "web") == str(paths.network_dir("web"))
    assert unplug.lease_file(root, "web", "1234") == str(paths.lease("web", "1234"))
    assert unplug.plan_file(root, "web", "1234") == str(paths.teardown_plan("web", "1234"))
    assert str(NETNS_DIR) == unplug.NETNS_DIR


def test_a_teardown_plan_reads_back_and_a_torn_one_is_none() -> None:
    plan = unplug.Plan("sdv0123", "sdrun-x", ["10.123.0.9\ta box\n"], "add element x\ndelete element x\n")
    again = unplug.Plan.from_text(plan.to_text())
    assert again is not None
    assert (again.veth, again.netns, again.hosts_lines, again.nft_commands) == (
        "sdv0123",
        "sdrun-x",
        ["10.123.0.9\ta box\n"],
        "add element x\ndelete element x\n",
    )
    assert unplug.Plan.from_text(plan.to_text()[:-1]) is None  # cut short: no plan
    assert unplug.Plan.from_text(plan.to_text().replace(" 1\n", " 2\n", 1)) is None  # another version's
    assert unplug.Plan.from_text(plan.to_text() + "veth\tsdv2\n") is None  # two veths: not ours


def test_a_leaving_pods_lines_go_from_the_hosts_file_and_only_the_shared_part_of_each_copy(tmp_path: Path) -> None:
    """A pod with --add-host has the network's lines, then its own: one of its own that reads as the
    leaving pod's stays."""
    leaving = "10.123.0.9\ta\n"
    shared = ipam.LOCALHOST_LINES + "10.123.0.3\tc\n" + leaving + "10.123.0.10\tb\n"
    (tmp_path / "hosts").write_text(shared)
    (tmp_path / "hosts.c").write_text(shared + leaving)
    assert unplug.drop_hosts_lines(str(tmp_path), [leaving])
    kept = ipam.LOCALHOST_LINES + "10.123.0.3\tc\n10.123.0.10\tb\n"
    assert (tmp_path / "hosts").read_text() == kept
    assert (tmp_path / "hosts.c").read_text() == kept + leaving
    (tmp_path / "hosts.c").write_text("not the network's lines\n")  # as a crash between two rewrites leaves it
    assert not unplug.drop_hosts_lines(str(tmp_path), ["10.123.0.3\tc\n"])
    assert (tmp_path / "hosts").read_text() == kept  # nothing changed: the caller rewrites them from the leases


def test_nft_commands_add_and_remove_the_same_elements() -> None:
    ports = (PortMapping.parse("8001:8000"), PortMapping.parse("127.0.0.1:9001:9000/udp"))
    added = nft.element_commands(NETWORK, "10.123.0.2", ports)
    assert "add element ip sdrun published { tcp . 8001 : 10.123.0.2 . 8000 }" in added
    assert "add element ip sdrun published_at { 127.0.0.1 . udp . 9001 : 10.123.0.2 . 9000 }" in added
    assert 'add element ip sdrun intra { "sdrun7" . "sdrun7" }' in added
    removed = nft.remove_port_commands("10.123.0.2", ports).splitlines()
    assert removed[1] == "delete element ip sdrun published { tcp . 8001 }"
    assert removed[3] == "delete element ip sdrun published_at { 127.0.0.1 . udp . 9001 }"


def test_nft_accepts_the_rules_in_a_scratch_namespace() -> None:
    """`nft -c` checks a ruleset against the kernel without changing anything."""
    commands = nft.SKELETON + nft.element_commands(NETWORK, "10.123.0.2", (PortMapping.parse("8001:8000"),))
    commands += nft.source_commands("add", "sdv0123456789ab", "10.123.0.2")
    commands += nft.remove_port_commands("10.123.0.2", (PortMapping.parse("8001:8000"),))
    commands += nft.remove_source_commands("sdv0123456789ab", "10.123.0.2")
    result = subprocess.run(["nft", "-c", "-f", "-"], input=commands, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# Run in a network namespace of its own: how many nft transactions each add() took, and whether
# the table then held the rules and the pod's port.
NFT_ADD_SCENARIO = """
import json, subprocess, sys
from sdrun.net import nft
from sdrun.net.ports import PortMapping
from tests.test_net import NETWORK

transactions = []
apply = nft.apply
nft.apply = lambda commands: (transactions.append(commands), apply(commands))
started = nft.unplug.NftRun  # the first transaction is started, and waited for later
nft.unplug.NftRun = lambda commands: (transactions.append(commands), started(commands))[1]
outcome = []
source = '"sdv0123456789ab" . 02:01:23:45:67:89 . 10.123.0.2'
scratch = (["flush", "ruleset"], ["delete", "set", "ip", "sdrun", nft.MARK], ["delete", "table", "bridge", "sdrun"])
for before in ([], [], *scratch):
    if before:
        subprocess.run(["nft", *before], check=True)
    transactions.clear()
    nft.add(NETWORK, "10.123.0.2", (PortMapping.parse("8001:8000"),), "sdv0123456789ab")
    table = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    added = "jump publish" in table and "jump from_pod" in table
    outcome.append([len(transactions), added, "tcp . 8001 : 10.123.0.2 . 8000" in table and source in table])
subprocess.run(["nft", "flush", "ruleset"], check=True)  # a removal finds nothing to remove, and does not fail
nft.apply(nft.remove_source_commands("sdv0123456789ab", "10.123.0.2"))
json.dump(outcome, sys.stdout)
"""


def test_a_pods_elements_go_alone_into_a_table_that_holds_these_rules() -> None:
    """No table (a new host, `nft flush ruleset`), one without these rules' mark (another version) or
    no bridge table: the skeleton comes along, in a second transaction. Otherwise the elements go alone."""
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", NFT_ADD_SCENARIO], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == [[2, True, True], [1, True, True], *[[2, True, True]] * 3]


@pytest.fixture
def host_route() -> Iterator[str]:
    """A route of this host's to 10.87.0.0/24, the default network's first candidate: a bridge
    interface's. (The test harness's network namespace has no routes of its own.)"""
    interface, subnet = f"sdtb{uuid.uuid4().hex[:8]}", "10.87.0.0/24"
    subprocess.run(["ip", "link", "add", interface, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "address", "add", "10.87.0.1/24", "dev", interface], check=True)
        subprocess.run(["ip", "link", "set", interface, "up"], check=True)
        yield subnet
    finally:
        subprocess.run(["ip", "link", "delete", interface], check=True)


def test_subnets_are_checked(tmp_path: Path, host_route: str) -> None:
    assert config.parse_subnet("10.89.0.0/24") == "10.89.0.0/24"
    for bad, reason in [("10.89.0.1/24", "host bits"), ("10.89.0.0/30", "at most"), ("127.0.0.0/8", "private")]:
        with pytest.raises(SpecError, match=reason):
            config.parse_subnet(bad)
    assert host_route in map(str, config.host_routes())
    with pytest.raises(SdrunError, match="overlaps the host's route"):
        config.create(tmp_path, "clash", "10.87.0.128/25")
    config.create(tmp_path, "one", "10.123.0.0/24")
    with pytest.raises(SdrunError, match="overlaps network 'one'"):
        config.create(tmp_path, "two", "10.123.0.128/25")
    with pytest.raises(SpecError, match="not a network name"):
        config.create(tmp_path, "host", "10.124.0.0/24")


def test_the_default_subnet_clashes_with_no_host_route(tmp_path: Path, host_route: str) -> None:
    default = config.load(tmp_path, "default")
    assert (default.bridge, default.subnet) == ("sdrun0", "10.86.0.0/16")  # 10.87.0.0/16 overlaps host_route
    other_root = tmp_path / "other"  # net.toml chooses
    other_root.mkdir()
    (other_root / "net.toml").write_text('subnet = "10.124.0.0/24"\nbridge = "sdrunx"\n')
    assert config.load(other_root, "default") == Network("default", "10.124.0.0/24", "sdrunx")


def imported_modules(*args: str) -> str:
    """What `sdrun ARGS` imported, per -X importtime (its stderr)."""
    command = [sys.executable, "-X", "importtime", SDRUN, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False).stderr


@needs_systemd
def test_commands_without_a_network_never_import_netlink(sdrun: Sdrun, rootfs: Path) -> None:
    root = str(sdrun.root)
    assert "sdrun.net.link" not in imported_modules(
        "--root", root, "run", "--rm", "--net", "none", "--rootfs", str(rootfs), "--", "true"
    )
    for command in (("list",), ("gc",), ("network", "list")):
        assert "sdrun.net.link" not in imported_modules("--root", root, *command)
    assert "sdrun.net.link" in imported_modules(  # what the others must not import
        "--root", root, "run", "--rm", "--net", "default", "--rootfs", str(rootfs), "--", "true"
    )


def test_netlink_requests_are_acknowledged_or_refused_with_the_kernels_errno() -> None:
    from sdrun.net import link

    network = Network("t", "10.124.0.0/29", f"sdtb{uuid.uuid4().hex[:8]}")
    link.ensure_bridge(network)
    try:
        link.ensure_bridge(network)  # there already, with its address: nothing to do
        shown = subprocess.check_output(["ip", "-o", "address", "show", network.bridge], text=True)
        assert "inet 10.124.0.1/29" in shown
        assert int(Path(f"/sys/class/net/{network.bridge}/flags").read_text(), 16) & 0x1  # IFF_UP
        with link.Netlink() as netlink, pytest.raises(FileExistsError) as raised:
            netlink.create_link(network.bridge, "bridge")
        assert describe(raised.value) == f"create bridge: File exists: {network.bridge}"
    finally:
        link.delete_link(network.bridge)
    assert not link.link_exists(network.bridge)
    link.delete_link(network.bridge)  # gone already: no error
    with pytest.raises(SdrunError, match="interface sdtbgone is missing"):
        link.interface_index("sdtbgone")


def test_a_pods_mac_is_locally_administered_unicast_and_fixed_by_its_veth_so_its_uuid() -> None:
    veth = veth_name("1c775767-a02b-4c4e-8f96-4889db237d8b")
    assert peer_mac(veth) == "02:1c:77:57:67:a0" == peer_mac(veth)
    assert peer_mac(veth_name("2c775767-a02b-4c4e-8f96-4889db237d8b")) != peer_mac(veth)


NETWORK6 = Network("six", "10.123.0.0/24", "sdrun8", "fd12:3456:789a::/64")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[fd00::1]:8001:8000", PortMapping(8001, 8000, "tcp", "fd00::1")),
        ("[FD00:0:0::1]:53:53/udp", PortMapping(53, 53, "udp", "fd00::1")),  # canonical: compressed, lower-case
        ("[::]:8080:80", PortMapping(8080, 80, "tcp", "::")),
    ],
)
def test_ipv6_port_mappings_parse_and_print_back(text: str, expected: PortMapping) -> None:
    assert PortMapping.parse(text) == expected
    assert PortMapping.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[::1]:8001:80", "on \\[::1\\]: the kernel does not forward"),
        ("[1.2.3.4]:8001:80", "an IPv6 address in brackets"),
        ("[fd00::1]8001:80", "expected"),
        ("fd00::1:8001:80", "expected"),
    ],
)
def test_bad_ipv6_port_mappings_are_refused(text: str, reason: str) -> None:
    with pytest.raises(SpecError, match=reason):
        PortMapping.parse(text)


def test_ipv6_port_clashes_follow_the_address_family() -> None:
    every_ipv6 = PortMapping.parse("[::]:8001:80")
    assert every_ipv6.clashes_with(PortMapping.parse("8001:81"))  # every address: both families
    assert every_ipv6.clashes_with(PortMapping.parse("[fd00::1]:8001:81"))
    assert not every_ipv6.clashes_with(PortMapping.parse("127.0.0.1:8001:81"))
    assert not PortMapping.parse("[fd00::1]:8001:80").clashes_with(PortMapping.parse("[fd00::2]:8001:80"))


def test_a_pods_ipv6_address_twins_its_ipv4_lease() -> None:
    assert NETWORK6.gateway6 == "fd12:3456:789a::1"
    assert NETWORK6.address6("10.123.0.2") == "fd12:3456:789a::2"
    wide = Network("wide", "10.80.0.0/16", "sdrun9", "fd12:3456:789a:1::/64")
    assert wide.address6("10.80.1.5") == "fd12:3456:789a:1::105"  # the host part 0.0.1.5, as 0x105


def test_ipv6_subnets_are_unique_local_per_network_and_checked(tmp_path: Path) -> None:
    first = config.unique_local_subnet(tmp_path, "one")
    assert first == config.unique_local_subnet(tmp_path, "one") != config.unique_local_subnet(tmp_path, "two")
    assert first.startswith("fd") and first.endswith("::/64")
    one = config.create(tmp_path, "one", "10.123.0.0/24", ipv6=True)
    assert one.subnet6 == first and config.create(tmp_path, "four", "10.126.0.0/24").subnet6 == ""
    with pytest.raises(SdrunError, match="overlaps network 'one'"):
        config.create(tmp_path, "two", "10.124.0.0/24", subnet6=str(list(ipaddress.IPv6Network(first).subnets(1))[1]))
    for bad, reason in [("fd00::1/64", "host bits"), ("fd00::/112", "at most"), ("fe80::/64", "unique local")]:
        with pytest.raises(SpecError, match=reason):
            config.create(tmp_path, "three", "10.125.0.0/24", subnet6=bad)
    (tmp_path / "net.toml").write_text('subnet = "10.127.0.0/24"\nipv6 = true\n')
    assert config.load(tmp_path, "default").subnet6 == config.unique_local_subnet(tmp_path, "default")


def test_hosts_file_names_pods_by_their_ipv6_address_too() -> None:
    six = lease("a", "10.123.0.2")._replace(address6="fd12:3456:789a::2")
    assert ipam.hosts_file([six]).endswith("10.123.0.2\ta\nfd12:3456:789a::2\ta\n")


def test_nft_commands_of_a_pod_with_ipv6() -> None:
    ports = (
        PortMapping.parse("8001:8000"),
        PortMapping.parse("[fd00::9]:8002:8000"),
        PortMapping.parse("127.0.0.1:8003:80"),
    )
    added = nft.element_commands(NETWORK6, "10.123.0.2", ports, "fd12:3456:789a::2")
    assert "add element ip6 sdrun published { tcp . 8001 : fd12:3456:789a::2 . 8000 }" in added
    assert "add element ip6 sdrun published_at { fd00::9 . tcp . 8002 : fd12:3456:789a::2 . 8000 }" in added
    assert "add element ip6 sdrun subnets { fd12:3456:789a::/64 }" in added
    assert "fd00::9" not in added.replace("ip6 sdrun published_at { fd00::9", "")  # not in the IPv4 table
    assert "ip6 sdrun published_at { 127.0.0.1" not in added
    sources = nft.source_commands("add", "sdv0123456789ab", "10.123.0.2", "fd12:3456:789a::2")
    assert '"sdv0123456789ab" . 02:01:23:45:67:89 . fe80::1:23ff:fe45:6789' in sources  # its EUI-64 link-local
    assert '"sdv0123456789ab" . 02:01:23:45:67:89 . ::' in sources  # duplicate address detection
    assert '"sdv0123456789ab" . 0xfd123456789a00000000000000000002' in sources  # a target it may advertise
    assert "ip6" not in nft.element_commands(NETWORK6, "10.123.0.2", ports)  # no IPv6 address, no IPv6 table
    commands = nft.SKELETON + nft.SKELETON6 + added + sources
    commands += nft.remove_port_commands("10.123.0.2", ports, "fd12:3456:789a::2")
    commands += nft.remove_source_commands("sdv0123456789ab", "10.123.0.2", "fd12:3456:789a::2")
    commands += nft.remove_network_commands(NETWORK6)
    result = subprocess.run(["nft", "-c", "-f", "-"], input=commands, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
