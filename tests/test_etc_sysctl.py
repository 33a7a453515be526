"""--add-host, --dns (--dns-search, --dns-option) and --sysctl under the real systemd: what the pod's
/etc/hosts, /etc/resolv.conf and /proc/sys show, on its own and on a network, installed, and what
each stage1 refuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sdrun.errors import SpecError
from sdrun.linux.rootfs import Credentials
from sdrun.net import config
from sdrun.pod import Pod
from sdrun.spec import Isolation, PodSpec, parse_sysctl
from stage1.app import ResolvedApp
from stage1.etcfiles import etc_mounts, pod_resolv_conf
from stage1.kvm.entry import guest_config
from stage1.namespace.container import container_plan
from tests.conftest import STATE_BASE, Sdrun, needs_systemd, unique_name, wait_for
from tests.test_kvm import needs_vm, run_vm
from tests.test_namespace import NS, run_in, shell
from tests.test_namespace_plan import make_pod

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SYSCTLS = {  # one of the network namespace's, the IPC namespace's kernel.* and fs.mqueue.*
    "net.ipv4.ip_unprivileged_port_start": "80",
    "kernel.shmmax": "1048576",
    "fs.mqueue.msg_max": "20",
}
SYSCTL_OPTIONS = tuple(option for key, value in SYSCTLS.items() for option in ("--sysctl", f"{key}={value}"))
SHOW_SYSCTLS = "; ".join(f"cat /proc/sys/{key.replace('.', '/')}" for key in SYSCTLS)


def host_resolv_conf() -> str:
    return HOST_RESOLV_CONF.read_text() if HOST_RESOLV_CONF.exists() else ""


def host_sysctls() -> list[str]:
    return [Path("/proc/sys", key.replace(".", "/")).read_text().strip() for key in SYSCTLS]


# --- pure logic ---


def test_resolv_conf_lines_are_replaced_by_the_pods() -> None:
    base = "# a comment\nnameserver 10.0.0.1\ndomain corp\nsearch corp example.org\noptions edns0\nsortlist 10.0.0.0\n"
    assert pod_resolv_conf(base, Isolation(dns=("1.1.1.1", "2001:db8::53"))) == (
        "# a comment\ndomain corp\nsearch corp example.org\noptions edns0\nsortlist 10.0.0.0\n"
        "nameserver 1.1.1.1\nnameserver 2001:db8::53\n"
    )
    assert pod_resolv_conf(base, Isolation(dns_search=("a.test", "b.test"), dns_option=("ndots:2",))) == (
        "# a comment\nnameserver 10.0.0.1\nsortlist 10.0.0.0\nsearch a.test b.test\noptions ndots:2\n"
    )
    assert "search" not in pod_resolv_conf(base, Isolation(dns_search=(".",)))  # podman's: no search domains


@pytest.mark.parametrize(
    ("sysctl", "complaint"),
    [
        ("vm.swappiness=10", "--sysctl vm.swappiness is not namespaced"),
        ("kernel.pid_max=100000", "--sysctl kernel.pid_max is not namespaced"),
        ("kernel.hostname=x", "--hostname"),
        ("kernel.shmmax", "expected KEY=VALUE"),
        ("net/ipv4/ip_forward=1", "expected KEY=VALUE"),
        ("net.ipv4..x=1", "expected KEY=VALUE"),
    ],
)
def test_a_sysctl_of_the_host_is_refused(sysctl: str, complaint: str) -> None:
    with pytest.raises(SpecError, match=complaint):
        parse_sysctl(sysctl)


def test_a_network_pod_with_added_hosts_and_nameservers_binds_files_of_its_own(tmp_path: Path) -> None:
    isolation = Isolation(add_host=("db:10.0.0.5",), dns=("10.0.0.53",))
    pod = Pod("u", tmp_path / "pods" / "u", PodSpec(name="web", stage1="namespace", net="blue", isolation=isolation), 0)
    assert [mount.describe() for mount in etc_mounts(pod)] == [
        "bind hostname on /etc/hostname",
        f"bind {tmp_path}/net/blue/hosts.u on /etc/hosts (read-only)",  # the network's lines and its own
        "bind resolv.conf on /etc/resolv.conf",  # its own, in its stage1 directory
    ]


def test_the_plan_carries_the_sysctls_and_refuses_one_the_kernel_lacks(tmp_path: Path) -> None:
    sysctls = ["kernel.shmmax=1048576", "net.ipv4.conf.eth0.rp_filter=2", "kernel.sem=250 32000 100 128"]
    plan = container_plan(make_pod(tmp_path, sysctl=sysctls))  # eth0: the pod's, which the host may lack
    assert plan.sysctls == (
        ("kernel.shmmax", "1048576"),
        ("net.ipv4.conf.eth0.rp_filter", "2"),
        ("kernel.sem", "250 32000 100 128"),
    )
    with pytest.raises(SpecError, match="this kernel has no such sysctl"):
        container_plan(make_pod(tmp_path, sysctl=["net.core.no_such_knob=1"]))


def test_a_guests_sysctls_survive_the_shell(tmp_path: Path) -> None:
    app = ResolvedApp("/bin/true", ("/bin/true",), {}, "/", Credentials(0, 0, (), "/root"))
    isolation = Isolation(sysctl=("kernel.sem=250 32000 100 128", "net.ipv4.ip_unprivileged_port_start=80"))
    pod = Pod("u", tmp_path, PodSpec(name="p", stage1="kvm", rootfs="/", isolation=isolation), 0.0)
    (tmp_path / "conf").write_text(guest_config(pod, app))
    script = '. ./conf; eval "set -- $SDRUN_SYSCTL"; printf "%s|" "$@"'
    output = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert output.stdout == "kernel/sem=250 32000 100 128|net/ipv4/ip_unprivileged_port_start=80|"


# --- the namespace stage1 ---


@needs_systemd
def test_added_hosts_and_nameservers_are_in_the_pods_etc_files(sdrun: Sdrun, rootfs: Path) -> None:
    options = ("--add-host", "db.local:10.1.2.3", "--add-host", "v6:[fd00::1]", "--dns", "10.0.0.53")
    hosts, resolv_conf = shell(sdrun, rootfs, "cat /etc/hosts; echo @; cat /etc/resolv.conf", *options).split("@\n")
    assert hosts.splitlines()[-2:] == ["10.1.2.3\tdb.local", "fd00::1\tv6"]
    assert [line for line in resolv_conf.splitlines() if line.startswith("nameserver")] == ["nameserver 10.0.0.53"]
    kept = [line for line in host_resolv_conf().splitlines() if not line.startswith("nameserver")]
    assert [line for line in resolv_conf.splitlines() if not line.startswith("nameserver")] == kept
    searched = shell(
        sdrun, rootfs, "cat /etc/resolv.conf", "--dns-search", "example.org", "--dns-option", "ndots:2"
    ).splitlines()
    assert searched[-2:] == ["search example.org", "options ndots:2"]
    assert not [line for line in searched[:-2] if line.startswith(("search", "domain", "options"))]


@needs_systemd
@pytest.mark.parametrize(
    "options",
    [(), ("--private-users",), ("--net", "default"), ("--net", "default", "--private-users")],
    ids=["own", "userns", "network", "network-userns"],
)
def test_sysctls_are_set_in_the_pods_namespaces_only(sdrun: Sdrun, rootfs: Path, options: tuple[str, ...]) -> None:
    before = host_sysctls()
    script = f"{SHOW_SYSCTLS}; echo 5 2>/dev/null > /proc/sys/kernel/shmmax || echo read-only"
    output = shell(sdrun, rootfs, script, *SYSCTL_OPTIONS, *options).split()
    assert output == [*SYSCTLS.values(), "read-only"]  # and /proc/sys is read-only for the app after
    assert host_sysctls() == before


@needs_systemd
def test_a_network_pod_gets_its_added_hosts_beside_the_networks_and_its_own_nameserver(
    sdrun: Sdrun, rootfs: Path
) -> None:
    first, second = unique_name("first"), unique_name("second")
    added = ("--add-host", "gw:host-gateway", "--add-host", "db:10.9.9.9", "--dns", "192.0.2.53")
    sdrun("run", "-d", "--name", first, "--net", "default", *added, "--rootfs", str(rootfs), "--", "sleep", "300")
    sdrun("run", "-d", "--name", second, "--net", "default", "--rootfs", str(rootfs), "--", "sleep", "300")
    gateway = config.load(sdrun.root, "default").gateway

    def hosts_of(pod: str) -> str:
        return sdrun("enter", pod, "--", "cat", "/etc/hosts").stdout

    wait_for(lambda: f"\t{second}" in hosts_of(first))  # the network's lines, kept current
    assert hosts_of(first).splitlines()[-2:] == [f"{gateway}\tgw", "10.9.9.9\tdb"]
    assert f"\t{first}" in hosts_of(second) and "\tgw" not in hosts_of(second)  # only the first pod's
    resolv_conf = sdrun("enter", first, "--", "cat", "/etc/resolv.conf").stdout
    assert [line for line in resolv_conf.splitlines() if line.startswith("nameserver")] == ["nameserver 192.0.2.53"]
    assert "nameserver 192.0.2.53" not in sdrun("enter", second, "--", "cat", "/etc/resolv.conf").stdout
    network_dir = sdrun.root / "net" / "default"
    assert len(list(network_dir.glob("hosts.*"))) == 1  # the first pod's own hosts file
    sdrun("rm", "-f", first, second)
    assert not list(network_dir.glob("hosts.*"))  # gone with its lease


@needs_systemd
@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (("--sysctl", "vm.swappiness=10"), "--sysctl vm.swappiness is not namespaced"),
        (("--sysctl", "net.ipv4.ip_forward=1", "--net", "host"), "--net host shares the host's"),
        (("--sysctl", "net.ipv4.no_such_thing=1"), "--sysctl net.ipv4.no_such_thing: this kernel has no such sysctl"),
        (("--sysctl", "kernel.domainname=x"), "--hostname"),
        (("--add-host", "db"), "invalid --add-host 'db'"),
        (("--add-host", "db:10.0.0.300"), "invalid --add-host"),
        (("--add-host", "gw:host-gateway"), "host-gateway needs a network"),
        (("--dns", "dns.example.org"), "invalid --dns 'dns.example.org'"),
        (("--dns-option", "ndots 2"), "invalid --dns-option"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    sdrun: Sdrun, rootfs: Path, options: tuple[str, ...], complaint: str
) -> None:
    result = run_in(sdrun, rootfs, *options, "--", "true", check=False)
    assert result.returncode == 125
    assert result.stderr.startswith("sdrun: ") and len(result.stderr.splitlines()) == 1
    assert complaint in result.stderr
    assert sdrun.pods() == [] and sdrun.new_units() == set()


@needs_systemd
def test_an_installed_pod_keeps_them(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    data = STATE_BASE / f"data-{name}"
    data.mkdir(parents=True)
    script = f"{{ cat /etc/hosts /etc/resolv.conf; {SHOW_SYSCTLS}; }} > /data/out.tmp && mv /data/out.tmp /data/out"
    options = (*NS, "--add-host", "db:10.1.2.3", "--dns", "10.0.0.53", *SYSCTL_OPTIONS, "-v", f"{data}:/data")
    sdrun("install", "--now", name, *options, "--rootfs", str(rootfs), "--", "sh", "-c", script + "; exec sleep 300")
    try:
        wait_for((data / "out").exists)
        lines = (data / "out").read_text().splitlines()
        assert "10.1.2.3\tdb" in lines and "nameserver 10.0.0.53" in lines
        assert lines[-3:] == list(SYSCTLS.values())
        unit_file = subprocess.run(
            ["systemctl", "cat", f"sdrun-{name}.service"], capture_output=True, text=True, check=True
        ).stdout
        assert "--add-host=db:10.1.2.3 " in unit_file and "--sysctl=kernel.shmmax=1048576 " in unit_file
    finally:
        sdrun("uninstall", name, check=False)
        subprocess.run(["rm", "-rf", str(data)], check=False)


@needs_systemd
@pytest.mark.parametrize(
    "option", [("--add-host", "db:10.1.2.3"), ("--dns", "10.0.0.53"), ("--sysctl", "kernel.shmmax=1048576")]
)
def test_fly_refuses_them(sdrun: Sdrun, rootfs: Path, option: tuple[str, str]) -> None:
    command = ("run", "--rm", "--stage1", "fly", "--net", "host", *option, "--rootfs", str(rootfs), "--", "true")
    result = sdrun(*command, check=False)
    assert result.returncode == 125 and len(result.stderr.splitlines()) == 1
    assert f"{option[0]} needs the namespace stage1" in result.stderr
    assert sdrun.pods() == [] and sdrun.new_units() == set()


# --- the kvm stage1: the guest's kernel is the pod's own ---


@needs_systemd
@needs_vm
def test_a_guest_gets_its_sysctls_added_hosts_and_nameservers(sdrun: Sdrun, rootfs: Path) -> None:
    options = ("--net", "none", "--add-host", "db:10.1.2.3", "--dns", "10.0.0.53", *SYSCTL_OPTIONS)
    script = f"tail -n 1 /etc/hosts; grep nameserver /etc/resolv.conf; {SHOW_SYSCTLS}"
    output = run_vm(sdrun, rootfs, *options, "--", "sh", "-c", script).stdout.splitlines()
    assert output == ["10.1.2.3\tdb", "nameserver 10.0.0.53", *SYSCTLS.values()]
