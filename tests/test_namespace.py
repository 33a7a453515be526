"""The namespace stage1 end to end: real systemd, real namespaces, overlayfs, seccomp and capabilities."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from sdrun.linux import caps
from stage1 import sealed
from tests.conftest import SDRUN, STATE_BASE, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for
from tests.test_image_support import umoci_change, umoci_image

pytestmark = needs_systemd
# --net none: a private network namespace with loopback only, whatever the default network is.
NS = ("--stage1", "namespace", "--net", "none")
NAMESPACE_KINDS = ("mnt", "pid", "uts", "ipc", "cgroup", "net")
PROGRAMS = Path(__file__).resolve().parent / "programs"


def run_in(sdrun: Sdrun, rootfs: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`sdrun run --stage1 namespace [OPTIONS...] --rootfs ROOTFS -- CMD...`: args before '--' are options."""
    split = args.index("--")
    return sdrun("run", "--rm", *NS, *args[:split], "--rootfs", str(rootfs), *args[split:], check=check)


def shell(sdrun: Sdrun, rootfs: Path, script: str, *options: str, check: bool = True) -> str:
    return run_in(sdrun, rootfs, *options, "--", "/bin/sh", "-c", script, check=check).stdout


def host_mount_table() -> str:
    """Our mount table, but the sealed interpreter's view: the one mount sdrun keeps on the host (made
    by the first start that needs it, for every later one: stage1.sealed, tests/test_security_exe.py)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines(keepends=True)
    return "".join(line for line in lines if f" - overlay {sealed.MOUNT_SOURCE} " not in line)


def journal_of(unit: str) -> str:
    command = ["journalctl", "-u", unit, "-o", "cat", "--no-pager"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def mount_points() -> list[str]:
    """The mount points of our mount namespace (the host's, as far as a pod is concerned)."""
    return sorted(line.split()[4] for line in host_mount_table().splitlines())


def probe_results(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def cap_mask(text: str, field: str) -> int:
    (line,) = [line for line in text.splitlines() if line.startswith(f"{field}:")]
    return int(line.split()[1], 16)


@pytest.fixture(scope="session")
def sysprobe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/programs/sysprobe.c, linked statically so that it runs in the busybox rootfs."""
    binary = tmp_path_factory.mktemp("programs") / "sysprobe"
    source = PROGRAMS / "sysprobe.c"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True)
    return binary


def test_the_app_is_pid_1_and_sees_only_its_own_processes(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(sdrun, rootfs, "echo $$; ps -o pid,comm; true").splitlines()  # true: sh must not exec ps
    assert output[0] == "1"
    assert [line.split() for line in output[2:]] == [["1", "sh"], ["2", "ps"]]  # nothing of the host


def test_exit_status_is_the_apps(sdrun: Sdrun, rootfs: Path) -> None:
    assert run_in(sdrun, rootfs, "--", "sh", "-c", "exit 7", check=False).returncode == 7
    assert run_in(sdrun, rootfs, "--init", "--", "sh", "-c", "exit 5", check=False).returncode == 5  # through tini


def test_hostname_and_etc_files(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(sdrun, rootfs, "hostname; cat /etc/hostname; grep -c box /etc/hosts", "--hostname", "box")
    assert output.split() == ["box", "box", "1"]
    host_resolv_conf = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    assert shell(sdrun, rootfs, "cat /etc/resolv.conf") == host_resolv_conf  # a copy of the host's
    name = unique_name()
    assert shell(sdrun, rootfs, "hostname", "--name", name).strip() == name  # the pod name by default


def test_default_capabilities_and_no_new_privs(sdrun: Sdrun, rootfs: Path) -> None:
    status = shell(sdrun, rootfs, "cat /proc/self/status")
    expected = caps.mask(caps.DEFAULT_CAPABILITIES)
    assert cap_mask(status, "CapEff") == expected
    assert cap_mask(status, "CapBnd") == expected
    assert cap_mask(status, "CapAmb") == 0
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status


def test_cap_add_and_cap_drop(sdrun: Sdrun, rootfs: Path) -> None:
    status = shell(sdrun, rootfs, "cat /proc/self/status", "--cap-add", "net_admin", "--cap-drop", "CAP_CHOWN")
    expected = caps.mask((caps.DEFAULT_CAPABILITIES | {"NET_ADMIN"}) - {"CHOWN"})
    assert cap_mask(status, "CapEff") == expected
    output = shell(sdrun, rootfs, "touch /f; chown 1000 /f || echo denied", "--cap-drop", "CHOWN")
    assert "denied" in output


def test_user_1000_runs_without_capabilities(sdrun: Sdrun, rootfs: Path) -> None:
    status = shell(sdrun, rootfs, "id -u; id -g; cat /proc/self/status", "--user", "1000")
    assert status.split()[:2] == ["1000", "1000"]
    assert cap_mask(status, "CapEff") == 0


# Each call succeeds, or fails otherwise than with EPERM, for root in a container without a filter.
FILTERED_CALLS = {
    "keyctl": "0",
    "unshare-user": "0",
    "clone3": "EINVAL",  # the filter's ENOSYS makes libc fall back to clone, whose flags it can see
    "userfaultfd": "0",
    "personality": "0",
    "process_vm_readv": "0",
    "name_to_handle_at": "EOVERFLOW",
    "get_mempolicy": "0",
    "set_mempolicy": "0",
    "pidfd_getfd": "0",
}


def test_default_seccomp_profile_denies_with_eperm(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    allowed = {"getpid": "0", "getcpu": "0", "inet": "0"}
    probe = ("-v", f"{sysprobe}:/probe:ro", "--", "/probe", *allowed, *FILTERED_CALLS)
    confined = run_in(sdrun, rootfs, *probe)  # exit 0: the filter refuses, it does not kill
    assert probe_results(confined.stdout) == allowed | {
        name: "ENOSYS" if name == "clone3" else "EPERM" for name in FILTERED_CALLS
    }
    unconfined = run_in(sdrun, rootfs, "--seccomp", "unconfined", *probe)
    assert probe_results(unconfined.stdout) == allowed | FILTERED_CALLS
    assert "Seccomp:\t0" in shell(sdrun, rootfs, "cat /proc/self/status", "--seccomp", "unconfined")
    # The busybox applet the README shows.
    denied = shell(sdrun, rootfs, "unshare -U true 2>&1; echo status=$?")
    assert "Operation not permitted" in denied and "status=1" in denied


def test_a_capability_brings_back_the_calls_it_guards(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    probe = ("-v", f"{sysprobe}:/probe:ro", "--", "/probe", "mount", "unshare-user", "process_vm_readv", "keyctl")
    default = probe_results(run_in(sdrun, rootfs, *probe).stdout)
    assert default == dict.fromkeys(("mount", "unshare-user", "process_vm_readv", "keyctl"), "EPERM")
    widened = run_in(sdrun, rootfs, "--cap-add", "SYS_ADMIN", "--cap-add", "SYS_PTRACE", *probe)
    expected = {"mount": "0", "unshare-user": "0", "process_vm_readv": "0", "keyctl": "EPERM"}
    assert probe_results(widened.stdout) == expected


def test_ptrace_and_nice_bring_back_pidfd_getfd_and_memory_policies(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    calls = ("pidfd_getfd", "get_mempolicy", "set_mempolicy")
    probe = ("-v", f"{sysprobe}:/probe:ro", "--", "/probe", *calls)
    assert probe_results(run_in(sdrun, rootfs, "--cap-add", "SYS_PTRACE", *probe).stdout) == {
        "pidfd_getfd": "0",
        "get_mempolicy": "EPERM",
        "set_mempolicy": "EPERM",
    }
    niced = run_in(sdrun, rootfs, "--cap-add", "SYS_NICE", *probe)
    assert probe_results(niced.stdout) == {"pidfd_getfd": "EPERM", "get_mempolicy": "0", "set_mempolicy": "0"}


def test_af_vsock_and_af_alg_sockets_are_refused(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    families = ("vsock", "vsock-high", "alg")
    probe = ("-v", f"{sysprobe}:/probe:ro", "--", "/probe", "inet", *families)
    confined = probe_results(run_in(sdrun, rootfs, *probe).stdout)
    assert confined == {"inet": "0"} | dict.fromkeys(families, "EPERM")
    unconfined = probe_results(run_in(sdrun, rootfs, "--seccomp", "unconfined", *probe).stdout)
    assert unconfined["inet"] == "0" and "EPERM" not in {unconfined[family] for family in families}


def test_no_raw_sockets_without_cap_add_net_raw(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    """NET_RAW would let a pod forge frames to its neighbours on a bridge (ARP, router adverts)."""
    probe = ("-v", f"{sysprobe}:/probe:ro", "--", "/probe", "raw-socket", "icmp-socket")
    assert probe_results(run_in(sdrun, rootfs, *probe).stdout) == {"raw-socket": "EPERM", "icmp-socket": "0"}
    widened = run_in(sdrun, rootfs, "--cap-add", "NET_RAW", *probe).stdout
    assert probe_results(widened) == {"raw-socket": "0", "icmp-socket": "0"}
    # iputils' ping needs no NET_RAW: the pod's ping_group_range lets its groups open ICMP echo sockets.
    # (busybox's opens a raw socket only: it needs --cap-add NET_RAW.)
    probed = run_in(sdrun, rootfs, "--user", "1000", "-v", f"{sysprobe}:/probe:ro", "--", "/probe", "icmp-socket")
    assert probe_results(probed.stdout) == {"icmp-socket": "0"}
    ranges = shell(sdrun, rootfs, "cat /proc/sys/net/ipv4/ping_group_range", "--private-users").split()
    assert ranges == ["0", "65535"]  # the groups of its user namespace
    bridged = ("--stage1", "namespace", "--net", "default", "--rootfs", str(rootfs), "--")
    ranges = sdrun("run", "--rm", *bridged, "cat", "/proc/sys/net/ipv4/ping_group_range").stdout.split()
    assert ranges == ["0", "2147483647"]  # sdrun.net's namespace: set by the network's set-up
    pinged = shell(sdrun, rootfs, "ping -c 1 -W 5 127.0.0.1 >/dev/null && echo pinged", "--cap-add", "NET_RAW")
    assert pinged == "pinged\n"


def test_oci_seccomp_profile(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    output = shell(sdrun, rootfs, "mkdir /x 2>&1; unshare -U true && echo unshared", "--seccomp", str(path))
    assert "Permission denied" in output  # errno 13, as the profile says
    assert "unshared" in output


def test_masked_and_read_only_proc_paths(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(
        sdrun,
        rootfs,
        "wc -c < /proc/keys; ls /proc/acpi 2>/dev/null | wc -l;"
        "{ echo 1 > /proc/sys/kernel/domainname; } 2>/dev/null || echo ro-sys;"
        "{ echo h > /proc/sysrq-trigger; } 2>/dev/null || echo ro-sysrq;"
        "touch /sys/x 2>/dev/null || echo ro-sysfs",
    )
    assert output.split() == ["0", "0", "ro-sys", "ro-sysrq", "ro-sysfs"]


def test_minimal_dev(sdrun: Sdrun, rootfs: Path) -> None:
    *names, count = shell(sdrun, rootfs, "ls -1 /dev; head -c 4 /dev/urandom | wc -c").split()
    assert set(names) >= {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx"}
    assert not {"sda", "vda", "kmsg", "mem"} & set(names)
    assert count == "4"


def test_read_only_volume_and_persistent_volume(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = unique_name()
    sdrun(
        "run", *NS, "--name", name, "-v", f"{data}:/data", "-v", f"{data}:/ro:ro", "--rootfs", str(rootfs), "--",
        "sh", "-c", "echo kept > /data/file; echo x > /ro/other 2>/dev/null || echo read-only",
    )  # fmt: skip
    sdrun("rm", name)
    assert (data / "file").read_text() == "kept\n"
    assert not (data / "other").exists()


def test_read_only_root_and_tmpfs(sdrun: Sdrun, private_rootfs: Path, tmp_path: Path) -> None:
    """The mount points the rootfs lacks are made in the pod's own layer: the directory, which other
    pods may run too, is never written, --read-only or not."""
    (private_rootfs / "etc" / "hostname").unlink(missing_ok=True)
    before = sorted(str(path.relative_to(private_rootfs)) for path in private_rootfs.rglob("*"))
    output = shell(
        sdrun, private_rootfs, "touch /x 2>/dev/null || echo ro; echo ok > /scratch/f && cat /scratch/f; ls /new/sub",
        "--read-only", "--tmpfs", "/scratch:size=1m", "-v", f"{tmp_path}:/new/sub",
    )  # fmt: skip
    assert output.split() == ["ro", "ok"]
    assert sorted(str(path.relative_to(private_rootfs)) for path in private_rootfs.rglob("*")) == before


def test_read_only_gives_tmp_var_tmp_and_run_a_tmpfs_as_podman_does(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    writes = "for d in /tmp /var/tmp /run /etc; do touch $d/w 2>/dev/null && echo $d; done; "
    mounts = "grep -E ' /(tmp|var/tmp|run|run/x) ' /proc/self/mounts | cut -d' ' -f2,3,4"
    output = shell(sdrun, rootfs, writes + mounts, "--read-only").splitlines()
    assert output[:3] == ["/tmp", "/var/tmp", "/run"]  # /etc stays read-only
    assert sorted(line.split()[:2] for line in output[3:]) == [
        ["/run", "tmpfs"],
        ["/tmp", "tmpfs"],
        ["/var/tmp", "tmpfs"],
    ]
    assert all("nosuid" in line and "nodev" in line and "noexec" not in line for line in output[3:])
    # Unless the pod mounts something there itself; a volume below one goes on top of the tmpfs.
    options = ("--read-only", "--tmpfs", "/tmp:size=1m", "-v", f"{tmp_path}:/var/tmp", "-v", f"{tmp_path}:/run/x")
    output = shell(sdrun, rootfs, writes + mounts, *options).splitlines()
    assert output[:3] == ["/tmp", "/var/tmp", "/run"]
    found = {line.split()[0]: line.split()[1:] for line in output[3:]}
    assert found["/tmp"][0] == "tmpfs" and "size=1024k" in found["/tmp"][1] and "noexec" in found["/tmp"][1]
    assert found["/var/tmp"][0] != "tmpfs" and found["/run"][0] == "tmpfs" and found["/run/x"][0] != "tmpfs"
    assert (tmp_path / "w").exists()
    assert shell(sdrun, rootfs, mounts) == ""  # not without --read-only: the pod's layer takes the writes


def test_writes_go_to_the_pods_own_layer_not_the_shared_rootfs(sdrun: Sdrun, rootfs: Path) -> None:
    marker = f"marker-{uuid.uuid4().hex[:6]}"
    shell(sdrun, rootfs, f"echo hi > /{marker} && cat /{marker}")
    assert not (rootfs / marker).exists()


def test_no_sdrun_process_remains_and_mounts_stay_out_of_the_host_table(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    # sleep as PID 1 ignores SIGTERM (no handler): the stop timeout ends it.
    options = ("-d", "--name", name, "--stop-timeout", "1", "--net", "default")  # a pod on a network
    pod_uuid = sdrun("run", "--stage1", "namespace", *options, "--rootfs", str(rootfs), "--", "sleep", "100").stdout
    pod_uuid = pod_uuid.strip()
    unit = f"sdrun-{name}.service"
    main_pid = int(systemctl_show(unit, "MainPID")["MainPID"])
    assert Path(f"/proc/{main_pid}/comm").read_text().strip() == "sleep"
    control_group = Path(f"/proc/{main_pid}/cgroup").read_text().splitlines()
    systemd_path = next(line.split(":", 2)[2] for line in control_group if ":name=systemd:" in line)
    procs = Path("/sys/fs/cgroup/systemd", systemd_path.lstrip("/"), "cgroup.procs").read_text().split()
    assert procs == [str(main_pid)]
    # Of the pod's mounts the host sees its named network namespace only (as `ip netns add` makes one).
    pod_mounts = [line.split()[4] for line in host_mount_table().splitlines() if pod_uuid in line]
    assert pod_mounts == [f"/run/netns/sdrun-{pod_uuid}"]
    # sdrun enter: same namespaces, same confinement.
    entered = sdrun("enter", name, "--", "sh", "-c", "hostname; ps -o comm | grep -c sleep; cat /proc/self/status")
    assert entered.stdout.split()[:2] == [name, "1"]
    assert cap_mask(entered.stdout, "CapEff") == caps.mask(caps.DEFAULT_CAPABILITIES)
    assert "Seccomp:\t2" in entered.stdout
    sdrun("stop", name)
    assert pod_uuid not in host_mount_table()


def test_stop_signal_and_timeout_reach_the_unit(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun(
        "run", *NS, "-d", "--name", name, "--stop-signal", "SIGINT", "--stop-timeout", "3", "--init",
        "--rootfs", str(rootfs), "--", "sleep", "100",
    )  # fmt: skip
    unit = f"sdrun-{name}.service"
    shown = systemctl_show(unit, "KillSignal", "TimeoutStopUSec", "MainPID")
    assert shown["KillSignal"] == "2"
    assert shown["TimeoutStopUSec"] == "3s"
    assert os.path.samestat(os.stat(f"/proc/{shown['MainPID']}/exe"), os.stat("/usr/bin/tini-static"))
    sdrun("stop", name)  # tini forwards SIGINT to sleep, which dies of it


def test_init_reaps_zombies_as_pid_1(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(sdrun, rootfs, "ps -o pid,comm | grep ' 1 '", "--init")
    assert "tini" in output or "init" in output


def test_private_users_with_root_owned_image(sdrun: Sdrun, rootfs: Path) -> None:
    assert os.stat(rootfs / "bin" / "busybox").st_uid == 0
    output = shell(
        sdrun, rootfs, "id -u; stat -c %u /bin/busybox; cat /proc/self/uid_map; echo new > /etc/new && cat /etc/new",
        "--private-users=200000:65536",
    )  # fmt: skip
    lines = output.splitlines()
    assert lines[0] == "0" and lines[1] == "0"
    assert lines[2].split() == ["0", "200000", "65536"]
    assert lines[3] == "new"


def test_private_users_auto_picks_a_range(sdrun: Sdrun, rootfs: Path) -> None:
    uid_map = shell(sdrun, rootfs, "cat /proc/self/uid_map", "--private-users")
    inside, base, count = (int(field) for field in uid_map.split())
    assert (inside, count) == (0, 65536) and base >= 0x80000


def test_symlinked_etc_cannot_carry_mounts_onto_the_host(sdrun: Sdrun, private_rootfs: Path) -> None:
    escape = Path(f"/sdrun-escape-{uuid.uuid4().hex[:8]}")
    escape.mkdir()  # the harness's / is a throwaway overlay
    try:
        etc = private_rootfs / "etc"
        (private_rootfs / escape.name).mkdir()
        for item in etc.iterdir():
            shutil.move(str(item), private_rootfs / escape.name / item.name)
        etc.rmdir()
        etc.symlink_to(escape)  # absolute: a lookup on the host would leave the rootfs
        output = shell(sdrun, private_rootfs, "cat /etc/hostname", "--hostname", "trapped")
        assert output.strip() == "trapped"
        assert list(escape.iterdir()) == []
        assert str(escape) not in host_mount_table()
    finally:
        shutil.rmtree(escape, ignore_errors=True)


def test_volume_target_symlinked_to_root_stays_inside(sdrun: Sdrun, private_rootfs: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "mark").write_text("volume\n")
    (private_rootfs / "trap").symlink_to("/")
    before = host_mount_table()
    # Through the link, /trap/etc is the container's own /etc: the volume lands there.
    output = shell(sdrun, private_rootfs, "cat /etc/mark", "-v", f"{volume}:/trap/etc")
    assert output == "volume\n"
    # /trap itself is the container's root: refused, rather than covering the root.
    name = unique_name()
    result = run_in(sdrun, private_rootfs, "--name", name, "-v", f"{volume}:/trap", "--", "true", check=False)
    assert result.returncode == 125
    assert "resolves to the container's root" in journal_of(f"sdrun-{name}.service")
    assert host_mount_table() == before
    assert Path("/etc/passwd").exists()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (("--cap-add", "NOT_A_CAP"), "unknown capability 'NOT_A_CAP'"),
        (("--seccomp", "/nonexistent.json"), "cannot read seccomp profile '/nonexistent.json'"),
        (("--seccomp", "/etc/hostname"), "not a valid seccomp profile"),
        (("--private-users=0:65536",), "must not start at host uid 0"),
        (("--tmpfs", "scratch"), "must be an absolute path"),
        (("--ulimit", "files=10"), "invalid ulimit 'files=10'"),
        (("--hostname", "a" * 65), "invalid hostname"),
        (("--hostname", "two words"), "invalid hostname 'two words'"),
    ],
)
def test_bad_isolation_input_is_one_line_and_leaves_nothing(
    sdrun: Sdrun, rootfs: Path, options: tuple[str, ...], complaint: str
) -> None:
    result = run_in(sdrun, rootfs, *options, "--", "true", check=False)
    assert result.returncode == 125
    assert result.stderr.startswith("sdrun: ") and len(result.stderr.splitlines()) == 1
    assert complaint in result.stderr
    assert sdrun.pods() == [] and sdrun.new_units() == set()


def test_scope_mode(sdrun: Sdrun, rootfs: Path) -> None:
    result = sdrun("run", *NS, "--scope", "--rootfs", str(rootfs), "--", "sh", "-c", "echo $$; exit 4", check=False)
    assert (result.returncode, result.stdout.strip()) == (4, "1")


def readlinks(paths: Iterable[str]) -> str:
    """A script printing the target of each link (busybox readlink takes one)."""
    return "".join(f"readlink {path}; " for path in paths)


def namespaces_of(output: str) -> dict[str, str]:
    """`readlink /proc/self/ns/KIND...` output, by kind."""
    links = [line.strip() for line in output.splitlines() if line.strip().endswith("]")]
    return {link.split(":", 1)[0]: link for link in links}


def test_every_namespace_but_the_users_is_new(sdrun: Sdrun, rootfs: Path) -> None:
    ours = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in (*NAMESPACE_KINDS, "user")}
    theirs = namespaces_of(shell(sdrun, rootfs, readlinks(f"/proc/self/ns/{kind}" for kind in ours)))
    assert set(theirs) == set(ours)
    assert [kind for kind in NAMESPACE_KINDS if theirs[kind] == ours[kind]] == []
    assert theirs["user"] == ours["user"]
    host = namespaces_of(shell(sdrun, rootfs, readlinks(["/proc/self/ns/net", "/proc/self/ns/uts"]), "--net", "host"))
    assert host["net"] == ours["net"] and host["uts"] != ours["uts"]


def test_host_network_shows_the_hosts_interfaces(sdrun: Sdrun, rootfs: Path) -> None:
    ours = sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    output = shell(sdrun, rootfs, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '", "--net", "host")
    assert sorted(output.split()) == ours


def test_ambient_capabilities_of_the_caller_are_cleared(sdrun: Sdrun, rootfs: Path) -> None:
    """A --scope pod starts from the CLI's credentials: ambient CHOWN (one of the default set) must not pass."""
    ambient = ["setpriv", "--inh-caps", "+chown", "--ambient-caps", "+chown"]
    raised = subprocess.run([*ambient, "cat", "/proc/self/status"], capture_output=True, text=True, check=True)
    assert cap_mask(raised.stdout, "CapAmb") == caps.mask(["CHOWN"])  # the premise: setpriv raised it
    command = [*ambient, SDRUN, "--root", str(sdrun.root), "run", "--rm", "--scope", *NS, "--rootfs", str(rootfs)]
    result = subprocess.run([*command, "--", "cat", "/proc/self/status"], capture_output=True, text=True, check=True)
    assert cap_mask(result.stdout, "CapAmb") == 0
    assert cap_mask(result.stdout, "CapEff") == caps.mask(caps.DEFAULT_CAPABILITIES)


def test_the_pods_mounts_never_reach_the_host_table(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    before = mount_points()
    name = unique_name()
    options = ("-d", "--name", name, "--init", "-v", f"{tmp_path}:/data", "-v", f"{tmp_path}:/ro:ro")
    sdrun("run", *NS, *options, "--tmpfs", "/scratch", "--rootfs", str(rootfs), "--", "sleep", "100")
    inside = shell(sdrun, rootfs, "cut -d' ' -f5 /proc/self/mountinfo", "--tmpfs", "/scratch")
    assert {"/", "/proc", "/dev", "/sys", "/scratch", "/proc/keys", "/etc/hostname"} <= set(inside.split())
    assert mount_points() == before  # while the pod runs
    sdrun("rm", "-f", name)
    assert mount_points() == before


HOST_KERNEL_FILES = (
    "/proc/kcore",
    "/proc/timer_list",
    "/proc/keys",
    "/proc/interrupts",
    "/proc/config.gz",
    "/proc/vmallocinfo",
    "/proc/slabinfo",
    "/proc/pagetypeinfo",
    "/sys/kernel/vmcoreinfo",
)


def test_masked_proc_paths_read_empty_and_refuse_writes(sdrun: Sdrun, rootfs: Path) -> None:
    present = [path for path in HOST_KERNEL_FILES if Path(path).exists()]
    assert present, "the host has none of the files the test reads"
    script = "; ".join(f"wc -c < {path}" for path in present)
    script += "; ls /sys/firmware | wc -l; { echo 3 > /proc/sys/vm/drop_caches; } 2>&1; true"
    output = shell(sdrun, rootfs, script).splitlines()
    assert output[:-1] == ["0"] * (len(present) + 1)
    assert "Read-only file system" in output[-1]


def block_device() -> tuple[int, int]:
    """Any block device of the host, as major and minor numbers."""
    first = sorted(os.listdir("/sys/dev/block"))[0]
    major, minor = first.split(":")
    return int(major), int(minor)


def test_device_policy_stops_a_node_the_app_made_itself(sdrun: Sdrun, rootfs: Path) -> None:
    """With MKNOD given back, only the unit's DevicePolicy keeps the host's disk closed."""
    major, minor = block_device()
    name = unique_name()
    script = f"mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo null-ok; mknod /dev/disk b {major} {minor}"
    denied = run_in(sdrun, rootfs, "--", "sh", "-c", f"{script} 2>&1", check=False).stdout
    assert denied.splitlines()[0] == "mknod: /dev/null2: Operation not permitted"  # MKNOD is not a default
    mknod = ("--cap-add", "MKNOD")
    output = run_in(sdrun, rootfs, "--name", name, *mknod, "--", "sh", "-c", f"{script} 2>&1", check=False).stdout
    assert output.splitlines() == ["null-ok", "mknod: /dev/disk: Operation not permitted"]
    unit = f"sdrun-{name}.service"
    sdrun("run", *NS, "-d", "--name", name, *mknod, "--rootfs", str(rootfs), "--", "sleep", "100")
    assert systemctl_show(unit, "DevicePolicy")["DevicePolicy"] == "closed"
    command = ["systemctl", "show", unit, "--property=DeviceAllow"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # a line per entry
    assert set(shown.splitlines()) == {"DeviceAllow=/dev/tty rw", "DeviceAllow=/dev/ptmx rw", "DeviceAllow=char-pts rw"}
    entered = sdrun("enter", name, "--", "mknod", "/dev/disk", "b", str(major), str(minor), check=False)
    assert "Operation not permitted" in entered.stderr  # `sdrun enter` is in the unit's cgroup too
    sdrun("rm", "-f", name)


@pytest.mark.skipif(not Path("/sys/fs/cgroup/devices").is_dir(), reason="no cgroup v1 devices controller")
def test_sys_admin_cannot_loosen_the_device_policy_through_a_cgroup_mount(sdrun: Sdrun, rootfs: Path) -> None:
    """With SYS_ADMIN a pod mounts the devices hierarchy; its root there is a child of the unit's
    cgroup, so `a *:* rwm` in devices.allow is refused and the host's disk stays closed."""
    major, minor = block_device()
    script = (
        "mkdir /cg && mount -t cgroup -o devices cgroup /cg && echo mounted;"
        "{ echo 'a *:* rwm' > /cg/devices.allow && echo widened; } 2>&1;"
        f"mknod /dev/disk b {major} {minor} && head -c 512 /dev/disk | wc -c"
    )
    options = ("--cap-add", "SYS_ADMIN", "--cap-add", "MKNOD")
    output = shell(sdrun, rootfs, f"{script} 2>&1", *options, check=False).splitlines()
    assert output[0] == "mounted" and "widened" not in output
    assert "Operation not permitted" in output[1]  # the write, refused: the parent allows no more
    assert output[2:] == ["mknod: /dev/disk: Operation not permitted"]  # the cgroup's `m`, as much as its `r`
    name = unique_name()
    sdrun("run", *NS, "-d", "--name", name, *options, "--rootfs", str(rootfs), "--", "sleep", "100")
    leader = systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"]
    devices = [line for line in Path(f"/proc/{leader}/cgroup").read_text().splitlines() if ":devices:" in line]
    assert len(devices) == 1 and devices[0].endswith(f"/sdrun-{name}.service/payload")
    sdrun("rm", "-f", name)


def test_a_scope_pod_has_the_device_policy_too_and_can_be_entered(sdrun: Sdrun, rootfs: Path) -> None:
    major, minor = block_device()
    script = f"mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo null-ok; mknod /dev/disk b {major} {minor} 2>&1"
    scoped = sdrun(
        "run",
        "--rm",
        "--scope",
        *NS,
        "--cap-add",
        "MKNOD",
        "--rootfs",
        str(rootfs),
        "--",
        "sh",
        "-c",
        script,
        check=False,
    )
    assert scoped.stdout.splitlines() == ["null-ok", "mknod: /dev/disk: Operation not permitted"]
    name = unique_name()
    command = [SDRUN, "--root", str(sdrun.root), "run", "--scope", *NS, "--name", name, "--hostname", "scoped"]
    app = subprocess.Popen([*command, "--rootfs", str(rootfs), "--", "sleep", "100"], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: systemctl_show(f"sdrun-{name}.scope", "ActiveState")["ActiveState"] == "active")
        shown = systemctl_show(f"sdrun-{name}.scope", "DevicePolicy", "Delegate")
        assert shown == {"DevicePolicy": "closed", "Delegate": "yes"}
        entered = sdrun("enter", name, "--", "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '").stdout
        assert entered.splitlines() == ["scoped", "sleep 100 "]  # the container's, not the supervisor's
    finally:
        sdrun("kill", name, check=False)
        app.wait(timeout=30)


def test_a_scope_pod_gets_the_signals_sent_to_sdrun_and_its_stop_timeout(sdrun: Sdrun, rootfs: Path) -> None:
    command = [SDRUN, "--root", str(sdrun.root), "run", "--scope", *NS, "--rootfs", str(rootfs), "--"]
    trap = 'trap "echo got-TERM; exit 7" TERM; echo up; while :; do sleep 0.1; done'
    app = subprocess.Popen([*command, "sh", "-c", trap], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert app.stdout is not None and app.stdout.readline() == "up\n"
    app.send_signal(signal.SIGTERM)  # to sdrun, as kill(1) or a supervisor would
    assert app.wait(timeout=30) == 7 and app.stdout.read() == "got-TERM\n"
    name = unique_name()
    stubborn = subprocess.Popen([*command[:4], "--name", name, "--stop-timeout", "1", *command[4:], "sleep", "100"])
    wait_for(lambda: systemctl_show(f"sdrun-{name}.scope", "ActiveState")["ActiveState"] == "active")
    assert systemctl_show(f"sdrun-{name}.scope", "TimeoutStopUSec")["TimeoutStopUSec"] == "1s"
    assert stop_seconds(sdrun, name) < 10  # sleep, PID 1, ignores SIGTERM: SIGKILL after 1 s
    assert stubborn.wait(timeout=30) == 137


def test_enter_on_a_terminal_gives_the_pod_a_terminal_of_its_own(sdrun: Sdrun, rootfs: Path) -> None:
    """The pod may keep whatever the entered command had open (a process left behind, or one that
    copies its descriptors with pidfd_getfd): never the user's terminal, whose keystrokes it would
    read after `enter` returned."""
    name = unique_name()
    sdrun("run", *NS, "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "100")
    master, slave = os.openpty()
    terminal = os.fstat(slave)
    users_terminal = (terminal.st_dev, terminal.st_rdev)  # the pod's devpts numbers its own from 0 too
    # The sleep outlives enter: it ignores the SIGHUP the terminal's end sends, before the shell goes on.
    keep = "(trap '' HUP; touch /tmp/kept; exec sleep 100) & until [ -e /tmp/kept ]; do sleep 0.01; done"
    script = f"{keep}; test -t 0 && test -t 1 && echo on-a-terminal; exit 3"
    command = [SDRUN, "--root", str(sdrun.root), "enter", name, "--", "sh", "-c", script]
    entered = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    output = b""
    with contextlib.suppress(OSError):  # EIO once sdrun, the last holder of the slave, has exited
        while chunk := os.read(master, 4096):
            output += chunk
    os.close(master)
    assert entered.wait(timeout=30) == 3
    assert output == b"on-a-terminal\r\n"
    group = systemctl_show(f"sdrun-{name}.service", "ControlGroup")["ControlGroup"]
    left = Path("/sys/fs/cgroup/systemd", group.lstrip("/"), "cgroup.procs").read_text().split()
    held = [(found.st_dev, found.st_rdev) for found in (os.stat(f"/proc/{pid}/fd/0") for pid in left)]
    assert len(held) == 2 and users_terminal not in held  # the pod's sleep, and the one enter left
    sdrun("rm", "-f", name)


def test_enter_gets_the_pods_namespaces_capabilities_and_filter(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    name = unique_name()
    options = ("-d", "--name", name, "--cap-drop", "ALL", "--cap-add", "KILL", "-v", f"{sysprobe}:/probe:ro")
    sdrun("run", *NS, *options, "--rootfs", str(rootfs), "--", "sleep", "100")
    links = readlinks(f"/proc/{process}/ns/{kind}" for kind in NAMESPACE_KINDS for process in ("self", "1"))
    script = f"{links}cat /proc/self/status; /probe keyctl unshare-user"
    output = sdrun("enter", name, "--", "sh", "-c", script).stdout
    pairs = [line for line in output.splitlines() if line.endswith("]")]
    assert len(pairs) == 2 * len(NAMESPACE_KINDS)
    assert all(pairs[index] == pairs[index + 1] for index in range(0, len(pairs), 2))  # the app's own
    assert cap_mask(output, "CapEff") == cap_mask(output, "CapBnd") == caps.mask(["KILL"])
    assert cap_mask(output, "CapAmb") == 0
    assert "NoNewPrivs:\t1" in output and "Seccomp:\t2" in output
    assert probe_results(output) == {"keyctl": "EPERM", "unshare-user": "EPERM"}
    sdrun("rm", "-f", name)
    other = unique_name()
    as_user = ("-d", "--name", other, "--user", "1000", "--seccomp", "unconfined")
    sdrun("run", *NS, *as_user, "--rootfs", str(rootfs), "--", "sleep", "100")
    output = sdrun("enter", other, "--", "sh", "-c", "id -u; cat /proc/self/status").stdout
    assert output.splitlines()[0] == "1000"
    assert "Seccomp:\t0" in output and cap_mask(output, "CapEff") == 0
    sdrun("rm", "-f", other)


def test_user_gets_its_groups(sdrun: Sdrun, rootfs: Path) -> None:
    assert shell(sdrun, rootfs, "id -u; id -g; id -G", "--user", "1000").split() == ["1000", "1000", "1000", "10"]
    assert shell(sdrun, rootfs, "id -un; id -g; id -G", "--user", "user:10").split() == ["user", "10", "10"]
    assert "Seccomp:\t2" in shell(sdrun, rootfs, "cat /proc/self/status", "--user", "1000")


def stop_seconds(sdrun: Sdrun, name: str) -> float:
    started = time.monotonic()
    sdrun("stop", name)
    return time.monotonic() - started


def test_the_stop_signal_reaches_the_app(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    name = unique_name()
    app = 'trap "echo got-USR1 > /data/signal; exit 3" USR1; echo up > /data/up; while :; do sleep 0.1; done'
    options = ("-d", "--name", name, "--stop-signal", "USR1", "--stop-timeout", "20", "-v", f"{tmp_path}:/data")
    sdrun("run", *NS, *options, "--rootfs", str(rootfs), "--", "sh", "-c", app)
    wait_for((tmp_path / "up").exists)
    assert stop_seconds(sdrun, name) < 10  # the app's own trap ended it, not the timeout's SIGKILL
    assert (tmp_path / "signal").read_text() == "got-USR1\n"
    sdrun("rm", name)


@pytest.mark.parametrize(("timeout", "low", "high"), [("2", 1.8, 10), ("0", 0, 1.5)])
def test_an_app_that_ignores_the_stop_signal_is_killed_after_the_timeout(
    sdrun: Sdrun, rootfs: Path, timeout: str, low: float, high: float
) -> None:
    name = unique_name()
    app = "trap '' TERM; while :; do sleep 0.1; done"  # PID 1 with SIGTERM ignored
    options = ("-d", "--name", name, "--stop-timeout", timeout)
    sdrun("run", *NS, *options, "--rootfs", str(rootfs), "--", "sh", "-c", app)
    assert low < stop_seconds(sdrun, name) < high  # 0: SIGKILL at once, as Docker's
    assert systemctl_show(f"sdrun-{name}.service", "ActiveState")["ActiveState"] in ("inactive", "failed")
    sdrun("rm", name)


def test_an_image_stop_signal_becomes_the_units(sdrun: Sdrun, rootfs: Path) -> None:
    work = STATE_BASE / f"image-{uuid.uuid4().hex[:8]}"
    try:
        reference = umoci_image(work / "layout", "stop", rootfs, "--config.stopsignal=SIGQUIT")
        name = unique_name()
        sdrun("run", *NS, "-d", "--name", name, reference, "--", "sleep", "100", timeout=120)
        assert systemctl_show(f"sdrun-{name}.service", "KillSignal")["KillSignal"] == str(int(signal.SIGQUIT))
        sdrun("rm", "-f", name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- symlinks in the image never carry a mount out of the rootfs ---


def test_relative_escapes_resolve_inside(sdrun: Sdrun, private_rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "mark").write_text("volume\n")
    (private_rootfs / "trap").symlink_to("../../../..")
    (private_rootfs / "tmp-link").symlink_to("../../../tmp")
    before = mount_points()
    options = ("-v", f"{tmp_path}:/trap/etc", "--tmpfs", "/tmp-link")
    output = shell(sdrun, private_rootfs, "cat /etc/mark; grep -c ' /tmp ' /proc/self/mountinfo", *options)
    assert output.split() == ["volume", "1"]  # /trap/etc is the container's /etc, /tmp-link its /tmp
    name = unique_name()
    result = run_in(sdrun, private_rootfs, "--name", name, "-v", f"{tmp_path}:/trap", "--", "true", check=False)
    assert result.returncode == 125
    assert "resolves to the container's root" in journal_of(f"sdrun-{name}.service")
    assert mount_points() == before


def test_dangling_absolute_links_are_followed_inside(sdrun: Sdrun, private_rootfs: Path, tmp_path: Path) -> None:
    """/dev, a tmpfs target and a volume target as absolute links to paths that exist on the host only:
    each mount lands on what the link names inside the rootfs, created there."""
    host = Path(f"/sdrun-escape-{uuid.uuid4().hex[:8]}")  # the harness's / is a throwaway overlay
    for directory in ("dev", "scratch", "data"):
        (host / directory).mkdir(parents=True)
    try:
        shutil.rmtree(private_rootfs / "dev")
        (private_rootfs / "dev").symlink_to(host / "dev")
        (private_rootfs / "scratch-link").symlink_to(host / "scratch")
        (private_rootfs / "data-link").symlink_to(host / "data" / "volume")
        (tmp_path / "mark").write_text("volume\n")
        before = mount_points()
        options = ("--tmpfs", "/scratch-link", "-v", f"{tmp_path}:/data-link")
        script = "ls /dev/null /dev/pts >/dev/null && echo dev; echo x > /scratch-link/f && echo tmpfs;"
        script += "cat /data-link/mark"
        assert shell(sdrun, private_rootfs, script, *options).split() == ["dev", "tmpfs", "volume"]
        assert mount_points() == before
        assert sorted(path.name for path in host.rglob("*")) == ["data", "dev", "scratch"]  # untouched, empty
    finally:
        shutil.rmtree(host, ignore_errors=True)


def test_a_volume_cannot_reach_proc_through_a_link_in_the_image(
    sdrun: Sdrun, private_rootfs: Path, tmp_path: Path
) -> None:
    """A volume over /proc/sys/kernel would fake cap_last_cap, which the bounding set is dropped by."""
    (tmp_path / "cap_last_cap").write_text("1\n")
    (private_rootfs / "knobs").symlink_to("/proc/sys/kernel")
    name = unique_name()
    result = run_in(sdrun, private_rootfs, "--name", name, "-v", f"{tmp_path}:/knobs", "--", "true", check=False)
    assert result.returncode == 125
    assert "mount target '/knobs' resolves into the container's /proc or /sys" in result.stderr


def test_a_dev_link_to_the_root_is_refused(sdrun: Sdrun, private_rootfs: Path) -> None:
    shutil.rmtree(private_rootfs / "dev")
    (private_rootfs / "dev").symlink_to("/")
    before = mount_points()
    name = unique_name()
    result = run_in(sdrun, private_rootfs, "--name", name, "--", "true", check=False)
    assert result.returncode == 125
    assert "mount target '/dev' resolves to the container's root" in journal_of(f"sdrun-{name}.service")
    assert mount_points() == before


def test_private_users_with_a_root_owned_image(sdrun: Sdrun, rootfs: Path) -> None:
    """An image of two layers whose files are owned by root: idmapped, they stay root's inside, a file
    the top layer deleted stays deleted, and writes (a copy-up too) work."""
    work = STATE_BASE / f"image-{uuid.uuid4().hex[:8]}"
    try:
        umoci_image(work / "layout", "base", rootfs)
        reference = umoci_change(work / "layout", "base", "top", "echo hi > hello; rm bin/ls")
        script = (
            "id -u; stat -c %u /bin/busybox /hello; cat /proc/self/uid_map; test -e /bin/ls || echo ls-deleted;"
            "echo new > /etc/new && cat /etc/new; echo more >> /hello && cat /hello"
        )
        options = ("--private-users=300000:65536", reference, "--", "sh", "-c", script)
        output = sdrun("run", "--rm", *NS, *options, timeout=120).stdout.splitlines()
        assert output[:3] == ["0", "0", "0"]
        assert output[3].split() == ["0", "300000", "65536"]
        assert output[4:] == ["ls-deleted", "new", "hi", "more"]
        # A bare --private-users before the image is the flag, read with click (--tls-verify) and without.
        for extra in ((), ("--tls-verify=false",)):
            bare = ("--private-users", *extra, reference, "--", "cat", "/proc/self/uid_map")
            inside, base, count = (int(field) for field in sdrun("run", "--rm", *NS, *bare).stdout.split())
            assert (inside, count) == (0, 65536) and base >= 0x80000
    finally:
        shutil.rmtree(work, ignore_errors=True)


def limits_of(output: str, what: str) -> list[str]:
    """Soft and hard limit of one line of /proc/PID/limits ("Max open files  100  200  files")."""
    (line,) = [line for line in output.splitlines() if line.startswith(f"Max {what} ")]
    return line.removeprefix(f"Max {what}").split()[:2]


def can_raise_hard_limits() -> bool:
    """Whether this machine lets root raise a hard limit (CAP_SYS_RESOURCE in our bounding set)."""
    bounding = cap_mask(Path("/proc/self/status").read_text(), "CapBnd")
    return bool(bounding & caps.mask(["SYS_RESOURCE"]))


@pytest.mark.parametrize("private_users", [(), ("--private-users",)], ids=["host-users", "private-users"])
@pytest.mark.parametrize("direction", ["lower", "raise"])
def test_ulimits_are_the_apps(sdrun: Sdrun, rootfs: Path, private_users: tuple[str, ...], direction: str) -> None:
    """Below the unit's limits, and a hard limit above systemd's default (which root in a user namespace
    could not raise itself); `sdrun enter` gets the same."""
    if direction == "raise" and not can_raise_hard_limits():
        pytest.skip("no CAP_SYS_RESOURCE on this machine: no process can raise a hard limit")
    hard = int(Path("/proc/sys/fs/nr_open").read_text()) if direction == "raise" else 2000
    name = unique_name()
    limits = ("--ulimit", f"nofile=1000:{hard}", "--ulimit", "core=0", "--ulimit", "memlock=65536:65536")
    sdrun("run", *NS, "-d", "--name", name, *private_users, *limits, "--rootfs", str(rootfs), "--", "sleep", "100")
    main_pid = systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"]
    for output in (
        Path(f"/proc/{main_pid}/limits").read_text(),
        sdrun("enter", name, "--", "cat", "/proc/self/limits").stdout,
    ):
        assert limits_of(output, "open files") == ["1000", str(hard)]
        assert limits_of(output, "core file size") == ["0", "0"]
        assert limits_of(output, "locked memory") == ["65536", "65536"]
    sdrun("rm", "-f", name)


def test_a_ulimit_the_kernel_refuses_is_one_line_before_any_unit(sdrun: Sdrun, rootfs: Path) -> None:
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    for limit, complaint in ((f"nofile={nr_open + 1}", "fs.nr_open"), ("nofile=2:1", "soft limit is above")):
        result = run_in(sdrun, rootfs, "--ulimit", limit, "--", "true", check=False)
        assert result.returncode == 125 and complaint in result.stderr and len(result.stderr.splitlines()) == 1
    assert sdrun.pods() == [] and sdrun.new_units() == set()


def test_ulimits_in_the_fly_stage1(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    options = ("-d", "--name", name, "--stage1", "fly", "--ulimit", "nofile=900:1900")
    sdrun("run", *options, "--rootfs", str(rootfs), "--", "sleep", "100")
    for output in (
        Path(f"/proc/{systemctl_show(f'sdrun-{name}.service', 'MainPID')['MainPID']}/limits").read_text(),
        sdrun("enter", name, "--", "cat", "/proc/self/limits").stdout,
    ):
        assert limits_of(output, "open files") == ["900", "1900"]
    sdrun("rm", "-f", name)


def test_an_images_symlinks_keep_its_mounts_inside(sdrun: Sdrun, private_rootfs: Path, tmp_path: Path) -> None:
    """An image whose /etc is an absolute link (/etc -> /host/etc), with a link to its root: the pod's
    /etc files land in the image's /host/etc, a volume on the link to / is refused."""
    host_etc = Path("/host/etc")  # the harness's / is a throwaway overlay
    host_etc.mkdir(parents=True, exist_ok=True)
    (private_rootfs / "host").mkdir()
    (private_rootfs / "etc").rename(private_rootfs / "host" / "etc")
    (private_rootfs / "etc").symlink_to("/host/etc")
    (private_rootfs / "trap").symlink_to("../..")
    work = STATE_BASE / f"image-{uuid.uuid4().hex[:8]}"
    try:
        reference = umoci_image(work / "layout", "links", private_rootfs)
        before = mount_points()
        script = "cat /etc/hostname; grep -c ' /host/etc/hostname ' /proc/self/mountinfo"
        output = sdrun("run", "--rm", *NS, "--hostname", "linked", reference, "--", "sh", "-c", script, timeout=120)
        assert output.stdout.split() == ["linked", "1"]
        volume = ("-v", f"{tmp_path}:/trap")
        refused = sdrun("run", "--rm", *NS, *volume, reference, "--", "true", check=False)
        assert refused.returncode == 125 and "resolves to the container's root" in refused.stderr
        assert list(host_etc.iterdir()) == []
        assert mount_points() == before
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree("/host", ignore_errors=True)


def orphan_states(sdrun: Sdrun, name: str) -> list[str] | None:
    """The process states of the pod's orphaned `sh` once it has done its work, else None."""
    if sdrun("enter", name, "--", "test", "-e", "/tmp/orphan-done", check=False).returncode != 0:
        return None
    processes = [line.split() for line in sdrun("enter", name, "--", "ps", "-o", "stat,comm").stdout.splitlines()]
    return [state for state, command in processes[1:] if command == "sh"]


def test_init_reaps_orphans_that_the_app_would_leave_as_zombies(sdrun: Sdrun, rootfs: Path) -> None:
    # The inner sh's parent exits at once: it is re-parented to PID 1, which must reap it.
    app = ("sh", "-c", "(sh -c 'sleep 0.1; echo > /tmp/orphan-done' &); exec sleep 100")
    for init, expected in ((), ["Z"]), (("--init",), []):
        name = unique_name()
        sdrun("run", *NS, "-d", "--name", name, *init, "--rootfs", str(rootfs), "--", *app)
        wait_for(lambda: orphan_states(sdrun, name) == expected)  # noqa: B023 - used within the iteration
        sdrun("rm", "-f", name)


def test_init_forwards_a_signal_to_the_app(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    """Sent to tini alone (the unit's MainPID, from the host), USR1 reaches the app's trap."""
    name = unique_name()
    app = 'trap "echo got-USR1 > /data/signal" USR1; echo up > /data/up; while :; do sleep 0.1; done'
    sdrun("run", *NS, "-d", "--name", name, "--init", "-v", f"{tmp_path}:/data", "--rootfs", str(rootfs), "--",
          "sh", "-c", app)  # fmt: skip
    wait_for((tmp_path / "up").exists)
    os.kill(int(systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"]), signal.SIGUSR1)
    wait_for((tmp_path / "signal").exists)
    assert (tmp_path / "signal").read_text() == "got-USR1\n"
    sdrun("rm", "-f", name)


def test_mac_labels_pass_through_to_the_unit(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    labels = ("--selinux-type", "system_u:system_r:container_t:s0", "--apparmor", "sdrun-test")
    sdrun("run", *NS, "-d", "--name", name, *labels, "--rootfs", str(rootfs), "--", "sleep", "100")
    shown = systemctl_show(f"sdrun-{name}.service", "SELinuxContext", "AppArmorProfile")
    assert shown == {"SELinuxContext": "system_u:system_r:container_t:s0", "AppArmorProfile": "sdrun-test"}
    sdrun("rm", "-f", name)


def read_write_mounts_under(output: str, prefix: str) -> list[str]:
    """Mount points under prefix whose mount options (mountinfo's sixth field) lack ro, but the
    /dev/null binds that mask files (/sys/kernel/vmcoreinfo): they hide, there is nothing to write."""
    mounts = [line.split() for line in output.splitlines()]
    return [
        fields[4]
        for fields in mounts
        if fields[4].startswith(prefix) and "ro" not in fields[5].split(",") and fields[3] != "/null"
    ]


def test_read_only_binds_are_read_only_all_the_way_down(sdrun: Sdrun, rootfs: Path) -> None:
    """A read-only volume whose source has mounts below it (the host's cgroup hierarchies), and the host's
    /sys that a pod with --private-users and --net host gets bound: every mount under them is read-only."""
    assert [line for line in host_mount_table().splitlines() if " /sys/fs/cgroup/" in line]  # the premise
    volume = shell(sdrun, rootfs, "cat /proc/self/mountinfo", "-v", "/sys/fs/cgroup:/cg:ro")
    assert len([line for line in volume.splitlines() if " /cg/" in line]) > 1
    assert read_write_mounts_under(volume, "/cg") == []
    bound = shell(sdrun, rootfs, "cat /proc/self/mountinfo", "--net", "host", "--private-users")
    assert len([line for line in bound.splitlines() if " /sys/" in line]) > 1
    assert read_write_mounts_under(bound, "/sys") == []


def test_the_app_cannot_reach_into_an_entering_process(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    """Between its fork into the pod and its exec, an `sdrun enter` child is the host's interpreter with
    host file descriptors (the bus among them): the app, scanning /proc, must see neither. What it
    sees of the entered command, after the exec, shows that the scan works."""
    scan = (
        "while :; do for p in /proc/[0-9]*; do [ $p = /proc/$$ ] && continue; exe=$(readlink $p/exe) || continue;"
        ' echo "$exe $(ls $p/fd | wc -l)" >> /spy/seen; done; done'
    )
    name = unique_name()
    sdrun("run", *NS, "-d", "--name", name, "-v", f"{tmp_path}:/spy", "--rootfs", str(rootfs), "--", "sh", "-c", scan)
    for _ in range(15):
        sdrun("enter", name, "--", "sleep", "0.2")
    sdrun("rm", "-f", name)
    seen = {line.split()[0] for line in (tmp_path / "seen").read_text().splitlines()}
    assert "/bin/busybox" in seen  # the scan saw the entered `sleep`, and the app's own children
    assert seen <= {"/bin/busybox"}, seen  # never the interpreter: its /proc/PID/exe and fd stay closed


@pytest.mark.parametrize("stage1", ["namespace", "fly"])
def test_enter_and_a_scope_take_none_of_the_callers_descriptors_along(
    sdrun: Sdrun, rootfs: Path, tmp_path: Path, stage1: str
) -> None:
    """A descriptor the caller left open (a directory, here) would hand the pod the host's files;
    the bus connection of `sdrun enter` itself, the host's systemd. Only stdio goes in."""
    held = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name = unique_name()
        options = ("--stage1", stage1, "--net", "none" if stage1 == "namespace" else "host")
        sdrun("run", *options, "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "100")
        entered = sdrun("enter", name, "--", "ls", "/proc/self/fd", pass_fds=(held,)).stdout
        sdrun("rm", "-f", name)
        scoped = sdrun(
            "run", "--rm", "--scope", *options, "--rootfs", str(rootfs), "--", "ls", "/proc/self/fd", pass_fds=(held,)
        ).stdout
    finally:
        os.close(held)
    assert entered.split() == scoped.split() == ["0", "1", "2", "3"]  # 3: the directory ls reads


def test_a_scope_app_cannot_type_into_the_callers_terminal(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    """--scope runs the app on the caller's terminal: TIOCSTI would queue input for the user's shell to
    run once the pod ends. The default filter refuses it, with the upper bits of the request set too."""

    def on_a_terminal(*options: str) -> dict[str, str]:
        command = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "--scope", *NS, *options]
        command += ["-v", f"{sysprobe}:/probe:ro", "--rootfs", str(rootfs), "--", "/probe", "tcgets", "tiocsti"]
        command.append("tiocsti-high")
        script = ["script", "-qec", " ".join(command), "/dev/null"]  # a pseudo-terminal, as a user's
        output = subprocess.run(script, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True).stdout
        return {key.strip(): value.strip() for key, value in probe_results(output.replace("\r", "")).items()}

    assert on_a_terminal("--seccomp", "unconfined") == {"tcgets": "0", "tiocsti": "0", "tiocsti-high": "0"}
    assert on_a_terminal() == {"tcgets": "0", "tiocsti": "EPERM", "tiocsti-high": "EPERM"}


def test_a_dangling_resolv_conf_link_gets_the_pods_file(sdrun: Sdrun, private_rootfs: Path) -> None:
    """As in an image of a systemd-resolved system: /etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf."""
    resolv_conf = private_rootfs / "etc" / "resolv.conf"
    resolv_conf.unlink(missing_ok=True)
    resolv_conf.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    # The copy's source is shared: a fly pod run on it leaves systemd's empty /run/systemd/incoming.
    shutil.rmtree(private_rootfs / "run" / "systemd", ignore_errors=True)
    host = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    assert shell(sdrun, private_rootfs, "cat /run/systemd/resolve/stub-resolv.conf") == host
    assert not (private_rootfs / "run" / "systemd").exists()  # made in the pod's own layer


PODMAN_PROFILE = Path("/usr/share/containers/seccomp.json")  # containers-common's, which podman installs


def test_podmans_own_seccomp_profile_confines_a_pod(sdrun: Sdrun, rootfs: Path, sysprobe: Path) -> None:
    """A real OCI profile with includes by capability and architecture: it compiles, the app runs
    under it, and what it grants only with SYS_ADMIN (mount) stays refused."""
    options = ("--seccomp", str(PODMAN_PROFILE), "-v", f"{sysprobe}:/probe:ro")
    result = run_in(sdrun, rootfs, *options, "--", "/probe", "getpid", "mount")
    assert probe_results(result.stdout) == {"getpid": "0", "mount": "EPERM"}
    assert "Seccomp:\t2" in shell(sdrun, rootfs, "cat /proc/self/status", "--seccomp", str(PODMAN_PROFILE))
    widened = run_in(sdrun, rootfs, *options, "--cap-add", "SYS_ADMIN", "--", "/probe", "mount")
    assert probe_results(widened.stdout) == {"mount": "0"}


@pytest.mark.parametrize("network", ["none", "default"])
def test_enter_joins_a_private_users_pod_as_its_mapped_root(sdrun: Sdrun, rootfs: Path, network: str) -> None:
    """The pod's user namespace owns its other namespaces but not a network namespace sdrun.net
    made for it (--net default): enter must join each with the rights it takes."""
    name = unique_name()
    options = ("-d", "--name", name, "--net", network, "--private-users=400000:65536")
    sdrun("run", "--stage1", "namespace", *options, "--rootfs", str(rootfs), "--", "sleep", "100")
    links = readlinks(f"/proc/{process}/ns/{kind}" for kind in (*NAMESPACE_KINDS, "user") for process in ("self", "1"))
    output = sdrun("enter", name, "--", "sh", "-c", f"{links}id -u; id -g; cat /proc/self/uid_map").stdout
    pairs = [line for line in output.splitlines() if line.endswith("]")]
    assert len(pairs) == 2 * (len(NAMESPACE_KINDS) + 1)
    assert all(pairs[index] == pairs[index + 1] for index in range(0, len(pairs), 2))
    rest = [line for line in output.splitlines() if not line.endswith("]")]
    assert rest[:2] == ["0", "0"] and rest[2].split() == ["0", "400000", "65536"]
    sdrun("rm", "-f", name)
