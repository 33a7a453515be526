"""The kvm stage1 end to end: real systemd, real qemu VMs (TCG here), virtiofsd; and its pure parts.

Each VM test boots a guest (a few seconds under TCG), so they are few and
each checks several things of one run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdrun.errors import SdrunError
from sdrun.net.unplug import rewrite_in_place
from sdrun.paths import Paths
from sdrun.pod import Pod
from sdrun.spec import AppSpec, Isolation, PodSpec, Resources, Volume
from stage1 import etcfiles
from stage1.kvm import initramfs, machine
from tests.conftest import STATE_BASE, Sdrun, needs_systemd, systemctl_show, unique_name

KVM = ("--stage1", "kvm", "--kvm-accel", "tcg")  # TCG: KVM boots no guest on the test machines
VM_TIMEOUT = 120  # seconds for one sdrun command that boots a VM under TCG on a loaded host


def guest_available() -> bool:
    return shutil.which(machine.QEMU) is not None and any(Path("/boot").glob("vmlinuz-*-cloud-amd64"))


needs_vm = pytest.mark.skipif(not guest_available(), reason="needs qemu-system-x86 and linux-image-cloud-amd64")


def run_vm(sdrun: Sdrun, rootfs: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`sdrun run --stage1 kvm [OPTIONS...] --rootfs ROOTFS -- CMD...`: args before '--' are options."""
    split = args.index("--")
    command = ("run", "--rm", *KVM, *args[:split], "--rootfs", str(rootfs), *args[split:])
    return sdrun(*command, check=check, timeout=VM_TIMEOUT)


@pytest.fixture
def volume_dirs() -> Iterator[tuple[Path, Path]]:
    base = STATE_BASE / f"kvm-volumes-{uuid.uuid4().hex[:8]}"
    writable, read_only = base / "rw", base / "ro"
    for directory in (writable, read_only):
        directory.mkdir(parents=True)
        directory.chmod(0o777)
    (read_only / "kept").write_text("from the host\n")
    (read_only / "kept").chmod(0o666)  # only the read-only mount may refuse a write
    yield writable, read_only
    shutil.rmtree(base, ignore_errors=True)


# --- VMs ---


@needs_systemd
@needs_vm
def test_output_exit_status_env_etc_files_and_a_kernel_of_its_own(sdrun: Sdrun, rootfs: Path) -> None:
    script = "echo out; echo err >&2; echo FOO=$FOO; uname -r; hostname; cat /etc/hostname /etc/hosts; exit 3"
    result = run_vm(
        sdrun, rootfs, "-e", "FOO=bar baz", "--hostname", "guest", "--", "/bin/sh", "-c", script, check=False
    )
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["out", "err", "FOO=bar baz"]
    guest_release = lines[3]
    assert guest_release != os.uname().release
    assert guest_release == initramfs.find_kernel(None).version
    # As the namespace stage1 gives them (--net none); then nothing of the kernel's or the init's messages.
    assert lines[4:] == ["guest", "guest", *etcfiles.hosts_file("guest").splitlines()]


@needs_systemd
@needs_vm
def test_a_read_only_guest_writes_to_tmp_var_tmp_and_run(
    sdrun: Sdrun, rootfs: Path, volume_dirs: tuple[Path, Path]
) -> None:
    writable, _ = volume_dirs
    script = (
        "for d in /tmp /var/tmp /run /run/data /etc; do touch $d/w 2>/dev/null && echo $d; done; "
        "grep -E ' /(tmp|var/tmp|run) ' /proc/self/mounts | cut -d' ' -f2,3"
    )
    lines = run_vm(sdrun, rootfs, "--read-only", "-v", f"{writable}:/run/data", "--", "/bin/sh", "-c", script)
    output = lines.stdout.splitlines()
    assert output[:3] == ["/tmp", "/var/tmp", "/run/data"]  # /run keeps the volume below it: no tmpfs hides it
    assert sorted(output[3:]) == ["/tmp tmpfs", "/var/tmp tmpfs"]
    assert (writable / "w").exists()


@needs_systemd
@needs_vm
def test_resources_user_workdir_and_volumes(sdrun: Sdrun, rootfs: Path, volume_dirs: tuple[Path, Path]) -> None:
    writable, read_only = volume_dirs
    script = (
        "nproc; grep MemTotal /proc/meminfo; id -u; pwd; echo written >result; "
        "cat /ro/kept; { echo no >/ro/kept; } 2>&1 | grep -o 'Read-only file system'"
    )
    volumes = ("-v", f"{writable}:/data", "-v", f"{read_only}:/ro:ro")
    options = ("--memory", "256M", "--cpus", "2", "-u", "1000", "-w", "/data", *volumes)
    lines = run_vm(sdrun, rootfs, *options, "--", "/bin/sh", "-c", script).stdout.splitlines()
    assert lines[0] == "2"
    memory_kib = int(lines[1].split()[1])
    assert 128 * 1024 < memory_kib <= 256 * 1024  # the guest's RAM is --memory, less the kernel's share
    assert lines[2:] == ["1000", "/data", "from the host", "Read-only file system"]
    assert (writable / "result").read_text() == "written\n"
    assert (writable / "result").stat().st_uid == 1000
    assert (read_only / "kept").read_text() == "from the host\n"


def process_status(pid: str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def assert_least_privilege(name: str) -> None:
    """qemu runs under its own seccomp filter, as the pod's own uid with no capabilities and
    no_new_privs; virtiofsd (which must stay root to serve root's files) under its own filter."""
    unit = f"/sdrun-{name}.service"
    pids = [path.parent.name for path in Path("/proc").glob("[0-9]*/cgroup") if unit in path.read_text()]
    statuses = [process_status(pid) for pid in pids]
    (qemu,) = [status for status in statuses if status["Name"] == "qemu-system-x86"]
    virtiofsds = [status for status in statuses if status["Name"] == "virtiofsd"]
    assert qemu["Seccomp"] == "2" and qemu["NoNewPrivs"] == "1" and int(qemu["CapEff"], 16) == 0
    assert qemu["Uid"].split() == [qemu["Uid"].split()[0]] * 4 and int(qemu["Uid"].split()[0]) >= 0x80000
    assert qemu["Gid"].split()[0] == qemu["Uid"].split()[0]
    # virtiofsd serves from a child in its namespaces; the parent that waits for it keeps no capability.
    (monitor,) = [status for status in virtiofsds if status["Pid"] in {other["PPid"] for other in virtiofsds}]
    (server,) = [status for status in virtiofsds if status["PPid"] == monitor["Pid"]]
    assert server["Seccomp"] == "2" and not int(server["CapEff"], 16) & (1 << 27)  # no MKNOD
    assert int(monitor["CapEff"], 16) == 0


@needs_systemd
@needs_vm
def test_enter_runs_in_the_guest_and_stop_shuts_it_down_cleanly(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("kvm")
    script = 'trap "echo stopping; exit 7" TERM; echo ready; while :; do sleep 0.1; done'
    command = ("run", "-d", "--name", name, *KVM, "--rootfs", str(rootfs), "-e", "MARK=entered")
    sdrun(*command, "--", "/bin/sh", "-c", script, timeout=VM_TIMEOUT)
    wait_for_line(sdrun, name, "ready")
    assert_least_privilege(name)
    entered = sdrun("enter", name, "/bin/sh", "-c", "echo $MARK; uname -r; exit 4", check=False, timeout=VM_TIMEOUT)
    assert entered.returncode == 4, entered.stderr
    assert entered.stdout.splitlines() == ["entered", initramfs.find_kernel(None).version]
    # A network's hosts file is rewritten in place as pods come and go: the running guest sees it.
    (pod_dir,) = (sdrun.root / "pods").iterdir()
    hosts = f"{etcfiles.hosts_file(name)}10.88.0.9\tother-pod\n"
    rewrite_in_place(Paths.stage1_dir(pod_dir) / "hosts", hosts)
    wait_for_guest_file(sdrun, name, "/etc/hosts", hosts)
    sdrun("stop", name, timeout=VM_TIMEOUT)
    assert sdrun("logs", name).stdout.splitlines() == ["ready", "stopping"]  # the app got SIGTERM in the guest
    assert re.search(r"exited \(7\)", sdrun("list").stdout)
    assert systemctl_show(f"sdrun-{name}.service", "ActiveState")["ActiveState"] in ("inactive", "failed", "")


@needs_systemd
@needs_vm
def test_kill_ends_the_vm_at_once_with_137(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("kvm")
    script = 'trap "echo ignored" TERM; echo ready; while :; do sleep 0.1; done'  # only SIGKILL ends it
    sdrun("run", "-d", "--name", name, *KVM, "--rootfs", str(rootfs), "--", "/bin/sh", "-c", script, timeout=VM_TIMEOUT)
    wait_for_line(sdrun, name, "ready")
    sdrun("kill", name)
    (pod,) = wait_until_ended(sdrun)
    assert (pod["name"], pod["state"], pod["exit_status"]) == (name, "exited", 137)
    assert systemctl_show(f"sdrun-{name}.service", "ActiveState")["ActiveState"] in ("inactive", "failed", "")


@needs_systemd
@needs_vm
def test_auto_falls_back_to_tcg_once_and_the_second_run_reuses_the_caches(sdrun: Sdrun, rootfs: Path) -> None:
    """The real probe, on a host where KVM boots no guest: one warning line, a cached verdict, and a
    second run that neither probes again nor rebuilds the initramfs."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: auto falls back without a probe")
    auto = ("run", "--rm", "--stage1", "kvm", "--kvm-accel", "auto", "--rootfs", str(rootfs), "--", "/bin/true")
    first = sdrun(*auto, timeout=VM_TIMEOUT)
    cache = sdrun.root / "cache" / "kvm"
    (verdict,) = cache.glob("accel-*")
    if verdict.read_text() == "kvm\n":
        pytest.skip("KVM boots a guest on this host")
    assert first.stderr == f"warning: KVM does not boot a guest on this host (cached in {verdict}): using TCG (slow)\n"
    (image,) = cache.glob("initramfs-*.cpio")
    written = {path: identity(path) for path in (verdict, image)}
    second = sdrun("--debug", *auto, timeout=VM_TIMEOUT)  # --debug: the probe would log its qemu command
    assert f"cached in {verdict}" in second.stderr and "probing kvm" not in second.stderr, second.stderr
    assert {path: identity(path) for path in written} == written
    assert sorted(cache.iterdir()) == sorted(written)


def identity(path: Path) -> tuple[int, int]:
    """What a rewrite (a new file renamed over it) or an update in place would change."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def wait_until_ended(sdrun: Sdrun, timeout: float = VM_TIMEOUT) -> list[dict[str, object]]:
    """`sdrun list --json` once no pod runs any more."""
    deadline = time.monotonic() + timeout
    while True:
        pods: list[dict[str, object]] = json.loads(sdrun("list", "--json").stdout)
        if all(pod["state"] in ("exited", "failed") for pod in pods):
            return pods
        assert time.monotonic() < deadline, f"pods still running: {pods}"
        time.sleep(0.2)


def wait_for_guest_file(sdrun: Sdrun, name: str, path: str, text: str, timeout: float = 10) -> None:
    """Within timeout: virtiofs (cache=auto) may keep a file's old size for a second."""
    deadline = time.monotonic() + timeout
    while (seen := sdrun("enter", name, "cat", path, timeout=VM_TIMEOUT).stdout) != text:
        assert time.monotonic() < deadline, f"the guest's {path} is still {seen!r}"
        time.sleep(0.5)


def wait_for_line(sdrun: Sdrun, name: str, line: str, timeout: float = VM_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while line not in sdrun("logs", name).stdout.splitlines():
        assert time.monotonic() < deadline, f"pod {name} never printed {line!r}"
        time.sleep(0.2)


@needs_vm
def test_the_probe_takes_only_the_inits_word_for_a_boot(tmp_path: Path) -> None:
    """Under TCG, so that both outcomes are real: the sdrun initramfs boots to its init; one
    with no init makes the kernel panic, and qemu exits 0 all the same (-no-reboot, panic=-1)."""
    kernel = initramfs.find_kernel(None)
    booting = initramfs.initramfs(kernel, tmp_path)
    assert machine.probe_booted(machine.run_probe(kernel, booting, "tcg", timeout=VM_TIMEOUT))
    panicking = tmp_path / "no-init.cpio"
    panicking.write_bytes(initramfs.cpio_member("TRAILER!!!", 0))
    panicked = machine.run_probe(kernel, panicking, "tcg", timeout=VM_TIMEOUT)
    assert panicked is not None and panicked.returncode == 0  # what the probe once took for a boot
    assert not machine.probe_booted(panicked)


# --- what is refused before any unit exists ---


@needs_systemd
@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (("--kvm-kernel", "/nonexistent/vmlinuz"), "guest kernel '/nonexistent/vmlinuz' does not exist"),
        (("--kvm-kernel", "/etc/hostname"), "is not an x86 Linux kernel image"),
        (("--cap-add", "NET_ADMIN"), "--cap-add does not apply to the kvm stage1"),
        (("--ulimit", "nofile=100"), "--ulimit is not carried into the kvm stage1's guest"),
        (("--memory", "64M"), "needs --memory of at least 128M"),
        (("--kvm-accel", "hvf"), "invalid kvm accelerator 'hvf'"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    sdrun: Sdrun, rootfs: Path, options: tuple[str, ...], complaint: str
) -> None:
    result = run_vm(sdrun, rootfs, *options, "--", "/bin/true", check=False)
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and complaint in result.stderr, result.stderr
    assert sdrun.pods() == []


# --- pure parts ---


def test_kernel_version_is_read_from_the_image() -> None:
    images = sorted(Path("/boot").glob("vmlinuz-*"))
    if not images:
        pytest.skip("no kernel in /boot")
    for image in images:
        assert initramfs.kernel_version(image) == image.name.removeprefix("vmlinuz-")


def test_modules_load_after_their_dependencies() -> None:
    kernel = initramfs.find_kernel(None) if guest_available() else None
    if kernel is None or not kernel.modules.is_dir():
        pytest.skip("no guest kernel with modules")
    names = [initramfs.module_name(str(path)) for path in initramfs.modules_to_load(kernel)]
    assert len(names) == len(set(names))
    for module, dependency in (("virtio_pci", "virtio"), ("virtio", "virtio_ring"), ("virtiofs", "fuse")):
        assert names.index(dependency) < names.index(module)
    assert {"virtio_console", "virtiofs", "qemu_fw_cfg"} <= set(names)


def test_cpio_members_are_newc_and_aligned() -> None:
    member = initramfs.cpio_member("bin/sh", 0o120777, b"busybox")
    assert member.startswith(b"070701") and len(member) % 4 == 0
    fields = [int(member[6 + 8 * index : 14 + 8 * index], 16) for index in range(13)]
    assert fields[1] == 0o120777 and fields[6] == len(b"busybox") and fields[11] == len("bin/sh") + 1
    assert member[110:117] == b"bin/sh\0" and member.rstrip(b"\0").endswith(b"busybox")


def test_guest_config_survives_the_shell(tmp_path: Path) -> None:
    """What the guest init sources and evals gives back the exact argv and environment."""
    from sdrun.linux.rootfs import Credentials
    from stage1.app import ResolvedApp
    from stage1.kvm.entry import guest_config

    argv = ("/bin/printf", "%s|", "it's", "two words", "$HOME", "line\nbreak", "")
    env = {"A": "x y", "B": "'quoted' $(not run)"}
    app = ResolvedApp("/bin/printf", argv, env, "/", Credentials(0, 0, (), "/root"))
    pod = Pod("u", tmp_path, PodSpec(name="p", stage1="kvm", rootfs="/"), 0.0)
    (tmp_path / "conf").write_text(guest_config(pod, app))
    script = '. ./conf; eval "set -- $SDRUN_ARGV"; printf "%s|" "$@"; eval "env -i $SDRUN_ENV env"'
    output = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert output.stdout.startswith("|".join(argv) + "|")
    assert output.stdout.split("|")[-1].splitlines() == ["A=x y", "B='quoted' $(not run)"]


def test_a_guest_on_a_network_gets_its_networks_hosts_and_resolv_conf(tmp_path: Path) -> None:
    """Pure logic, no network made: what the entry binds into the root it shares with the guest,
    and what the guest's configuration says, for a pod on network "blue" with a volume."""
    from sdrun.linux.rootfs import Credentials
    from stage1.app import ResolvedApp
    from stage1.kvm.entry import guest_config, root_mounts
    from stage1.kvm.network import GuestNetwork

    app_spec = AppSpec(argv=("/bin/true",), volumes=(Volume("/srv/data", "/data", read_only=True),))
    spec = PodSpec(name="web", stage1="kvm", rootfs="/", net="blue", app=app_spec, isolation=Isolation(hostname="www"))
    pod = Pod("u", tmp_path / "pods" / "u", spec, 0.0)
    network_dir = tmp_path / "net" / "blue"
    assert [mount.describe() for mount in root_mounts(pod)] == [
        "bind hostname on /etc/hostname",  # the pod's own, in its stage1 directory
        f"bind {network_dir}/hosts on /etc/hosts (read-only)",
        f"bind {network_dir}/resolv.conf on /etc/resolv.conf (read-only)",
        "bind /srv/data on /data (read-only)",
    ]
    app = ResolvedApp("/bin/true", ("/bin/true",), {}, "/", Credentials(0, 0, (), "/root"))
    network = GuestNetwork(tap_fd=10, mac="02:00:0a:58:00:05", address="10.88.0.5/24", gateway="10.88.0.1")
    settings = dict(line.split("=", 1) for line in guest_config(pod, app, network).splitlines())
    assert settings["SDRUN_HOSTNAME"] == "www"
    assert (settings["SDRUN_NET_ADDRESS"], settings["SDRUN_NET_GATEWAY"]) == ("10.88.0.5/24", "10.88.0.1")


def test_a_read_only_guest_gets_podmans_tmpfs_but_over_a_volume(tmp_path: Path) -> None:
    """Pure logic: the guest mounts SDRUN_TMPFS once the host has bound the volumes into the root."""
    from stage1.kvm.entry import guest_tmpfs

    app_spec = AppSpec(argv=("/bin/true",), volumes=(Volume("/srv/data", "/run/data"),))
    isolation = Isolation(read_only=True, tmpfs=("/tmp:size=1m",))
    pod = Pod("u", tmp_path, PodSpec(name="p", stage1="kvm", rootfs="/", app=app_spec, isolation=isolation), 0.0)
    assert guest_tmpfs(pod) == ("/var/tmp:exec,mode=1777", "/tmp:size=1m")
    writable = Pod("u", tmp_path, pod.spec._replace(isolation=isolation._replace(read_only=False)), 0.0)
    assert guest_tmpfs(writable) == ("/tmp:size=1m",)


def test_memory_and_cpus_map_to_the_vm() -> None:
    kernel = initramfs.Kernel(Path("/boot/vmlinuz"), "1")
    spec = PodSpec(name="p", stage1="kvm", rootfs="/", app=AppSpec(argv=("x",)), resources=Resources(300 << 20, 1.5))
    command = machine.qemu_command(spec, kernel, Path("initrd"), "tcg", 600000)
    assert command[command.index("-m") + 1] == "300M" and command[command.index("-smp") + 1] == "2"
    assert command[command.index("-runas") + 1] == "600000:600000"
    assert command[command.index("-sandbox") + 1].split(",")[0] == "on"
    assert "memory-backend-memfd,id=ram,size=300M,share=on" in command
    with pytest.raises(SdrunError, match="at least 128M"):
        machine.guest_memory(PodSpec(name="p", stage1="kvm", resources=Resources(memory=64 << 20)))


def test_a_cached_verdict_spares_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = initramfs.Kernel(Path("/boot/vmlinuz-test"), "test")
    assert machine.choose_accel("tcg", kernel, Path("initrd"), tmp_path) == "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kvm")
    probes: list[str] = []

    def kvm_never_boots(kernel: initramfs.Kernel, initrd: Path) -> bool:
        probes.append(kernel.version)
        return False

    monkeypatch.setattr(machine, "kvm_boots", kvm_never_boots)
    assert machine.choose_accel("auto", kernel, Path("initrd"), tmp_path) == "tcg"
    assert machine.choose_accel("auto", kernel, Path("initrd"), tmp_path) == "tcg"
    assert probes == ["test"]  # probed once, then read from the cache


@pytest.fixture
def pod_network_namespace() -> Iterator[Callable[[str, str], None]]:
    """Makes the network namespace the networking setup would (/run/netns/sdrun-UUID), its eth0 at
    SUBNET.2/24 wired by a veth to a peer namespace of its own at SUBNET.1: no traffic touches the host's."""
    made: list[str] = []

    def make(pod_uuid: str, subnet: str) -> None:
        pod_ns, peer_ns = f"sdrun-{pod_uuid}", f"kvmpeer-{pod_uuid[:8]}"
        for namespace in (pod_ns, peer_ns):
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            made.append(namespace)
        steps = [
            ["-n", peer_ns, "link", "add", "peer0", "type", "veth", "peer", "name", "eth0", "netns", pod_ns],
            ["-n", peer_ns, "address", "add", f"{subnet}.1/24", "dev", "peer0"],
            ["-n", peer_ns, "link", "set", "peer0", "up"],
            ["-n", pod_ns, "address", "add", f"{subnet}.2/24", "dev", "eth0"],
            ["-n", pod_ns, "link", "set", "eth0", "up"],
            ["-n", pod_ns, "route", "add", "default", "via", f"{subnet}.1"],
        ]
        for step in steps:
            subprocess.run(["ip", *step], check=True)

    yield make
    for namespace in made:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


@needs_systemd
@needs_vm
def test_the_nic_takes_over_the_pods_network_namespace(
    sdrun: Sdrun, rootfs: Path, pod_network_namespace: Callable[[str, str], None]
) -> None:
    """The pod's namespace is made by hand, as sdrun/net makes it for --net but with no bridge or nftables
    table (they would collide with the networking tests, which share the host's network namespace); the
    unit by systemd-run. A pod on a network sdrun/net made is left to the networking tests."""
    from sdrun.paths import Paths
    from sdrun.pod import PodStore
    from sdrun.specbuild import build_spec
    from stage1.interface import Stage1

    subnet = f"10.213.{uuid.uuid4().int % 250}"
    script = f"ip -4 -o address show eth0; cat /sys/class/net/eth0/address; ping -c 1 -W 10 {subnet}.1 >/dev/null"
    settings = {"rootfs": str(rootfs), "kvm_accel": "tcg", "exec": ("/bin/sh", "-c", script + " && echo reached")}
    store = PodStore(Paths(sdrun.root))
    pod = store.create(build_spec(settings, default_name=unique_name("kvm"), default_stage1="kvm"))
    pod_network_namespace(pod.uuid, subnet)
    show_eth0 = ["ip", "-n", f"sdrun-{pod.uuid}", "-j", "link", "show", "eth0"]
    mac = json.loads(subprocess.run(show_eth0, capture_output=True, text=True, check=True).stdout)[0]["address"]
    plan = Stage1.named("kvm").plan(pod)
    unit = ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "Type=notify", "-p", "NotifyAccess=main", *plan.argv]
    try:
        result = subprocess.run(
            unit, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=VM_TIMEOUT, check=False
        )
    finally:
        store.remove(pod)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"inet {subnet}.2/24" in lines[0]
    assert lines[1:] == [mac, "reached"]
