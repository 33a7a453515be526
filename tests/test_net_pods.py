"""Pods on networks under the real systemd: HTTP servers reached by address, by forwarded host
port on 127.0.0.1 and by name; and nothing of sdrun's left on the host once the pods are gone.

Only loopback and addresses inside namespaces these tests made are ever contacted."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sdrun.net import ipam
from sdrun.net import pod as network_pod
from sdrun.paths import Paths
from sdrun.pod import PodStore
from sdrun.spec import check_settings
from sdrun.specbuild import build_spec
from tests.conftest import PROJECT, SDRUN, Sdrun, needs_systemd, unique_name, wait_for
from tests.test_image_support import umoci_change, umoci_image

pytestmark = needs_systemd
SERVER = 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8000 -h /www'
WORK = PROJECT / "build" / "test-net"
PARALLEL_PODS = 50  # as many as issue 17 saw leave their networks behind


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def fetch(url: str, attempts: int = 50) -> str:
    """GET url, retrying while the server in the pod is not yet listening."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body.decode()
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def server(sdrun: Sdrun, rootfs: Path, name: str, *options: str) -> None:
    sdrun("run", "-d", "--name", name, *options, "--rootfs", str(rootfs), "--", "/bin/sh", "-c", SERVER)


def pod_json(sdrun: Sdrun, name: str) -> dict[str, object]:
    pods: list[dict[str, object]] = json.loads(sdrun("list", "--json").stdout)
    return next(pod for pod in pods if pod["name"] == name)


def host_state() -> str:
    """What the host shows of networking: links, named namespaces, nftables."""
    commands = (["ip", "-o", "link"], ["ip", "netns", "list"], ["nft", "list", "ruleset"])
    return "\n".join(subprocess.run(command, capture_output=True, text=True, check=True).stdout for command in commands)


def assert_no_pod_left(sdrun: Sdrun) -> None:
    """Nothing of any pod's: no veth, namespace, lease or published port (a network's bridge and
    table stay for the next pod, until gc)."""
    state = host_state()
    for trace in (" sdv", "sdrun-"):
        assert trace not in state, state
    assert not re.search(r"map published(_at)? \{[^}]*elements", state), state
    assert not re.search(r"set (pods|sources) \{[^}]*elements", state), state  # each pod's source filter
    assert not list((sdrun.root / "net").glob("*/leases/*"))


def assert_nothing_left(sdrun: Sdrun) -> None:
    assert_no_pod_left(sdrun)
    state = host_state()
    for trace in ("sdrun0", "table ip sdrun", "table bridge sdrun"):
        assert trace not in state, state


@pytest.fixture
def clean_host(sdrun: Sdrun) -> Iterator[Sdrun]:
    """sdrun, and a check afterwards that gc left nothing of its networking on the host."""
    yield sdrun
    for pod in sdrun.pods():
        sdrun("rm", "-f", pod, check=False)
    sdrun("gc")
    assert_nothing_left(sdrun)


@pytest.fixture(scope="module")
def web_image(rootfs: Path) -> str:
    """An OCI image whose command serves /www on port 8000 with busybox httpd."""
    layout = WORK / "layout"
    subprocess.run(["rm", "-rf", str(WORK)], check=True)
    umoci_image(layout, "base", rootfs)
    reference = umoci_change(layout, "base", "web", "mkdir -p www && echo served from an image > www/index.html")
    config = ["--config.cmd=httpd", "--config.cmd=-f", "--config.cmd=-p", "--config.cmd=8000", "--config.cmd=-h"]
    subprocess.run(["umoci", "config", "--image", f"{layout}:web", *config, "--config.cmd=/www"], check=True)
    return reference


def test_an_image_server_is_reached_by_address_and_by_a_port_on_localhost(clean_host: Sdrun, web_image: str) -> None:
    (port,) = free_ports(1)
    name = unique_name("web")
    clean_host("run", "-d", "--name", name, "--net", "default", "-p", f"127.0.0.1:{port}:8000", web_image)
    details = pod_json(clean_host, name)
    assert details["ports"] == [f"127.0.0.1:{port}:8000/tcp"]
    assert fetch(f"http://127.0.0.1:{port}/") == "served from an image\n"
    assert fetch(f"http://{details['ip']}:8000/") == "served from an image\n"
    listing = clean_host("list").stdout
    assert str(details["ip"]) in listing and f"127.0.0.1:{port}:8000/tcp" in listing


def test_three_servers_on_port_8000_side_by_side(clean_host: Sdrun, rootfs: Path) -> None:
    ports = free_ports(3)
    names = [unique_name(f"web{index}") for index in range(3)]
    for name, port in zip(names, ports, strict=True):
        server(clean_host, rootfs, name, "--net", "default", "-p", f"{port}:8000")
    addresses = {pod_json(clean_host, name)["ip"] for name in names}
    assert len(addresses) == 3
    for name, port in zip(names, ports, strict=True):
        assert fetch(f"http://127.0.0.1:{port}/") == f"hello from {name}\n"


def test_pods_on_one_network_reach_each_other_by_name(clean_host: Sdrun, rootfs: Path) -> None:
    network = unique_name("net")
    clean_host("network", "create", network, "--subnet", "10.231.7.0/24")
    name = unique_name("srv")
    server(clean_host, rootfs, name, "--net", network)
    assert str(pod_json(clean_host, name)["ip"]).startswith("10.231.7.")
    script = f"for i in $(seq 50); do wget -qO- http://{name}:8000/ && exit; sleep 0.1; done; exit 1"
    client = clean_host("run", "--rm", "--net", network, "--rootfs", str(rootfs), "--", "/bin/sh", "-c", script)
    assert client.stdout == f"hello from {name}\n"
    listed = json.loads(clean_host("network", "list", "--json").stdout)
    assert {"name": network, "subnet": "10.231.7.0/24", "subnet6": "", "pods": 1} == {
        key: value for key, value in next(item for item in listed if item["name"] == network).items() if key != "bridge"
    }
    busy = clean_host("network", "rm", network, check=False)
    assert busy.returncode == 125 and f"in use by {name}" in busy.stderr
    clean_host("rm", "-f", name)
    clean_host("network", "rm", network)


def test_net_none_has_only_loopback_and_a_pod_naming_no_network_is_on_the_default(sdrun: Sdrun, rootfs: Path) -> None:
    links = sdrun("run", "--rm", "--net", "none", "--rootfs", str(rootfs), "--", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    routes = sdrun("run", "--rm", "--rootfs", str(rootfs), "--", "ip", "route").stdout
    assert routes.startswith("default via ") and " dev eth0" in routes
    assert_no_pod_left(sdrun)
    assert "sdrun0" in host_state()  # the bridge waits for the next pod...
    sdrun("gc")
    assert_nothing_left(sdrun)  # ...until gc finds the network unused


def test_a_pod_with_its_own_users_is_on_the_default_network_too(sdrun: Sdrun, rootfs: Path) -> None:
    """The pod's user namespace does not own the network namespace sdrun.net made for it, so the
    stage1 cannot mount a sysfs of its own there: it shows the host's, read-only."""
    script = "id -u; ip route | grep -c '^default via .* dev eth0'; touch /sys/x 2>/dev/null || echo ro"
    output = sdrun("run", "--rm", "--private-users", "--rootfs", str(rootfs), "--", "/bin/sh", "-c", script).stdout
    assert output.split() == ["0", "1", "ro"]
    assert_no_pod_left(sdrun)


def test_a_taken_port_is_refused_and_leaves_nothing(clean_host: Sdrun, rootfs: Path) -> None:
    (port,) = free_ports(1)
    first = unique_name("a")
    server(clean_host, rootfs, first, "--net", "default", "-p", f"{port}:8000")
    second = clean_host(
        "run", "-d", "--net", "default", "-p", f"127.0.0.1:{port}:80", "--rootfs", "/", "--", "true", check=False
    )
    assert second.returncode == 125
    assert f"port {port}/tcp is already published by pod '{first}'" in second.stderr
    assert len(clean_host.pods()) == 1
    with socket.socket() as listener:  # a host process on a port: publishing it would shadow it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        third = clean_host(
            "run", "-d", "--net", "default", "-p", f"{taken}:80", "--rootfs", "/", "--", "true", check=False
        )
    assert third.returncode == 125 and f"port {taken}/tcp is in use on the host" in third.stderr
    assert fetch(f"http://127.0.0.1:{port}/") == f"hello from {first}\n"  # the first pod is untouched


def test_stop_rm_kill_and_gc_leave_nothing_behind(sdrun: Sdrun, rootfs: Path) -> None:
    ports = free_ports(3)
    names = [unique_name(kind) for kind in ("stopped", "removed", "killed")]
    for name, port in zip(names, ports, strict=True):
        server(sdrun, rootfs, name, "--net", "default", "-p", f"{port}:8000")
    scoped = sdrun(
        "run", "--rm", "--scope", "--net", "default", "--rootfs", str(rootfs), "--", "ip", "-o", "-4", "addr"
    )
    assert " eth0    inet " in scoped.stdout  # a scope, which has no unit hooks, sets its network up itself
    assert "table ip sdrun" in host_state()
    sdrun("stop", names[0])
    sdrun("rm", "-f", names[1])
    sdrun("kill", "-s", "KILL", names[2])
    # kill returns once the signal is sent; the unit's ExecStopPost then tears the network down.
    wait_for(lambda: pod_json(sdrun, names[2])["state"] not in ("running", "stopping"))
    assert_no_pod_left(sdrun)  # each tear-down took its pod's elements (the tables wait for gc)
    sdrun("gc")
    assert_nothing_left(sdrun)


def network_file(sdrun: Sdrun, name: str) -> Path:
    return sdrun.root / "net" / "default" / name


def test_a_pods_unit_tears_down_from_its_lease_when_it_has_no_plan(clean_host: Sdrun, rootfs: Path) -> None:
    """The unit's tear-down follows the plan its set-up wrote beside the lease; a lease without one
    (a crash between the two writes, a set-up from before plans) is undone all the same."""
    (port,) = free_ports(1)
    name = unique_name("planless")
    server(clean_host, rootfs, name, "-p", f"{port}:8000")
    pod_uuid = str(pod_json(clean_host, name)["uuid"])
    plan = network_file(clean_host, f"leases/.{pod_uuid}.plan")
    assert f"{pod_uuid}" in plan.read_text() and f"tcp . {port}" in plan.read_text()
    plan.unlink()
    clean_host("stop", name)
    assert_no_pod_left(clean_host)
    assert name not in network_file(clean_host, "hosts").read_text()


def test_a_stopped_pods_name_leaves_its_neighbours_hosts_files(clean_host: Sdrun, rootfs: Path) -> None:
    """Its line goes from the network's hosts file and from the copy of a pod with --add-host,
    which keeps its own lines."""
    keeper, leaver = unique_name("keeper"), unique_name("leaver")
    sleep = ("--rootfs", str(rootfs), "--", "sleep", "120")
    clean_host("run", "-d", "--name", keeper, "--net", "default", "--add-host", "db:10.1.2.3", *sleep)
    clean_host("run", "-d", "--name", leaver, "--net", "default", *sleep)
    own_copy = network_file(clean_host, f"hosts.{pod_json(clean_host, keeper)['uuid']}")
    for hosts in (network_file(clean_host, "hosts"), own_copy):
        assert f"\t{leaver}\n" in hosts.read_text() and f"\t{keeper}\n" in hosts.read_text()
    clean_host("stop", leaver)
    for hosts in (network_file(clean_host, "hosts"), own_copy):
        assert f"\t{leaver}\n" not in hosts.read_text() and f"\t{keeper}\n" in hosts.read_text()
    assert own_copy.read_text().endswith("10.1.2.3\tdb\n")
    clean_host("rm", "-f", leaver)


def test_gc_undoes_what_a_crash_left(sdrun: Sdrun, rootfs: Path) -> None:
    """A set-up whose unit never ran (as after a crash, or a reboot that kept the leases): gc undoes it."""
    settings = check_settings({"rootfs": str(rootfs), "net": "default", "port": ["127.0.0.1:1:80"]}, "test")
    spec = build_spec(settings, default_name=unique_name("crashed"), default_stage1="namespace")
    pod = PodStore(Paths(sdrun.root)).create(spec)
    survivor = unique_name("survivor")  # keeps the network, and so the tables, in use through gc
    sdrun("run", "-d", "--name", survivor, "--net", "default", "--rootfs", str(rootfs), "--", "sleep", "120")
    lease = network_pod.setup(sdrun.root, pod)
    with pod.locked():  # then its creator "crashes": the lock it held since the pod's creation goes
        pass
    assert lease.netns in host_state() and f'"{lease.veth}" . ' in host_state()
    removed = sdrun("gc").stdout
    assert f"removed {pod.name} ({pod.uuid}) and its network\n" in removed
    state = host_state()
    assert lease.netns not in state and lease.veth not in state and "table bridge sdrun" in state
    sdrun("rm", "-f", survivor)
    sdrun("gc")
    assert_nothing_left(sdrun)


def test_a_kvm_pod_on_a_network_is_reached_by_port_and_address_and_reaches_pods_by_name(
    clean_host: Sdrun, rootfs: Path
) -> None:
    """The VM's NIC takes over the pod's interface (tests/test_kvm.py has the mechanism); here the
    network is sdrun's own: a published port, the pod's address, and names in the guest's /etc/hosts."""
    network = unique_name("kvmnet")
    clean_host("network", "create", network, "--subnet", "10.232.9.0/24")
    neighbour, vm = unique_name("srv"), unique_name("vm")
    server(clean_host, rootfs, neighbour, "--net", network)
    (port,) = free_ports(1)
    kvm = ("--stage1", "kvm", "--kvm-accel", "tcg")  # KVM boots no guest on these machines: see test_kvm
    server(clean_host, rootfs, vm, *kvm, "--net", network, "-p", f"127.0.0.1:{port}:8000")
    assert fetch(f"http://127.0.0.1:{port}/", attempts=600) == f"hello from {vm}\n"  # the guest boots for seconds
    assert fetch(f"http://{pod_json(clean_host, vm)['ip']}:8000/") == f"hello from {vm}\n"
    script = f"wget -qO- http://{neighbour}:8000/; {{ echo x >/etc/hosts; }} 2>/dev/null || echo read-only"
    inside = clean_host("enter", vm, "--", "/bin/sh", "-c", script, timeout=120)
    assert inside.stdout == f"hello from {neighbour}\nread-only\n"
    clean_host("rm", "-f", vm, neighbour, timeout=120)
    clean_host("network", "rm", network)


@pytest.fixture
def remote_host() -> Iterator[tuple[str, str]]:
    """Another host on a link of this one: a network namespace of the test's own behind a veth pair.
    Yields (the namespace, this host's address on the link)."""
    namespace, link = unique_name("remote"), unique_name("sdtr")
    host_address, remote_address = "10.232.9.1", "10.232.9.2"
    steps = (
        ["netns", "add", namespace],
        ["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace],
        ["address", "add", f"{host_address}/24", "dev", link],
        ["link", "set", link, "up"],
        ["-n", namespace, "address", "add", f"{remote_address}/24", "dev", "eth0"],
        ["-n", namespace, "link", "set", "eth0", "up"],
        ["-n", namespace, "link", "set", "lo", "up"],
    )
    try:
        for step in steps:
            subprocess.run(["ip", *step], check=True)
        yield namespace, host_address
    finally:
        subprocess.run(["ip", "link", "delete", link], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


def test_a_published_port_is_reached_from_another_host(
    clean_host: Sdrun, rootfs: Path, remote_host: tuple[str, str]
) -> None:
    """Traffic that arrives on a host interface (not loopback, not a bridge) is forwarded to the pod."""
    namespace, host_address = remote_host
    (port,) = free_ports(1)
    name = unique_name("web")
    server(clean_host, rootfs, name, "-p", f"{port}:8000")  # on the default network: no --net given
    url = f"http://{host_address}:{port}/"
    get = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=2).read().decode(), end='')"
    fetch_from_remote = ["ip", "netns", "exec", namespace, sys.executable, "-c", get]

    bodies: list[str] = []

    def remote_fetch() -> bool:
        result = subprocess.run(fetch_from_remote, capture_output=True, text=True, check=False)
        bodies.append(result.stdout)
        return result.returncode == 0

    wait_for(remote_fetch, timeout=10)
    assert bodies[-1] == f"hello from {name}\n"


def no_lease_left(sdrun: Sdrun) -> bool:
    return not list((sdrun.root / "net").glob("*/leases/*"))


@pytest.mark.parametrize("stop_timeout", [None, "1"])
def test_fifty_pods_started_and_stopped_at_once_leave_nothing(
    sdrun: Sdrun, rootfs: Path, stop_timeout: str | None
) -> None:
    """Fifty `run --rm` on the default network at once. With the default stop timeout every
    tear-down completes before its unit goes (none queues behind the others past it); with a
    short one, in a unit of its own, it completes even when fifty interpreters starting at once
    outlast the timeout. Either way nothing waits for gc."""
    timeout = ("--stop-timeout", stop_timeout) if stop_timeout else ()
    command = ("run", "--rm", *timeout, "--net", "default", "--rootfs", str(rootfs), "--", "true")
    with ThreadPoolExecutor(max_workers=PARALLEL_PODS) as pool:
        runs = list(pool.map(lambda _: sdrun(*command, check=False, timeout=300), range(PARALLEL_PODS)))
    assert [run.returncode for run in runs] == [0] * PARALLEL_PODS, [run.stderr for run in runs if run.returncode]
    if stop_timeout:  # a unit whose timeout cut its wait short goes before its tear-down ends
        wait_for(lambda: no_lease_left(sdrun) and not sdrun.new_units(), timeout=120)
    assert_no_pod_left(sdrun)
    assert not sdrun.new_units() and not sdrun.pods()


def test_a_port_is_free_again_after_a_pod_with_no_stop_timeout(clean_host: Sdrun, rootfs: Path) -> None:
    """--stop-timeout 0 kills at once, but the tear-down still runs: systemd gives it a timeout of its own."""
    (port,) = free_ports(1)
    for _ in range(2):
        clean_host("run", "--rm", "--stop-timeout", "0", "-p", f"{port}:80", "--rootfs", str(rootfs), "--", "true")
        assert_no_pod_left(clean_host)


def test_a_port_left_by_a_removed_pod_is_taken_back(clean_host: Sdrun, rootfs: Path) -> None:
    """A pod whose tear-down was killed (here: never ran) and which was removed: the next pod that
    publishes its port tears the leftover down rather than refuse the port until gc."""
    (port,) = free_ports(1)
    settings = check_settings({"rootfs": str(rootfs), "net": "default", "port": [f"{port}:80"]}, "test")
    store = PodStore(Paths(clean_host.root))
    pod = store.create(build_spec(settings, default_name=unique_name("killed"), default_stage1="namespace"))
    lease = network_pod.setup(clean_host.root, pod)
    with pod.locked():  # its `run` is gone, and then so is the pod
        pass
    store.remove(pod)
    clean_host("run", "--rm", "-p", f"{port}:80", "--rootfs", str(rootfs), "--", "true")
    assert lease.netns not in host_state()
    assert_no_pod_left(clean_host)


def test_a_tear_down_held_up_past_the_stop_timeout_still_completes(clean_host: Sdrun, rootfs: Path) -> None:
    """The networking lock held (as by a gc, or many pods at once) for longer than the pod's stop
    timeout: its tear-down waits for it, and completes."""
    (port,) = free_ports(1)
    name = unique_name("held")
    server(clean_host, rootfs, name, "--stop-timeout", "1", "-p", f"{port}:8000")
    with ipam.locked(clean_host.root):
        stopping = subprocess.Popen([SDRUN, "--root", str(clean_host.root), "stop", name], stdout=subprocess.DEVNULL)
        wait_for(lambda: pod_json(clean_host, name)["state"] != "running")
        time.sleep(3)  # three stop timeouts: what systemd would have killed the tear-down after
        assert not no_lease_left(clean_host)  # the tear-down waits for the lock, alive
    assert stopping.wait(timeout=60) == 0
    wait_for(lambda: no_lease_left(clean_host))  # the unit went after 1 s: its tear-down, a unit of its own, goes on
    assert_no_pod_left(clean_host)
    clean_host("run", "--rm", "-p", f"{port}:80", "--rootfs", str(rootfs), "--", "true")  # the port is free
