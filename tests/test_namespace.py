"""The namespace stage1 end to end: real systemd, real namespaces, overlayfs, seccomp and capabilities."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrun.linux import caps
from tests.conftest import STATE_BASE, Sdrun, needs_systemd, systemctl_show, unique_name

pytestmark = needs_systemd
NS = ("--stage1", "namespace")


def run_in(sdrun: Sdrun, rootfs: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`sdrun run --stage1 namespace [OPTIONS...] --rootfs ROOTFS -- CMD...`: args before '--' are options."""
    split = args.index("--")
    return sdrun("run", "--rm", *NS, *args[:split], "--rootfs", str(rootfs), *args[split:], check=check)


def shell(sdrun: Sdrun, rootfs: Path, script: str, *options: str, check: bool = True) -> str:
    return run_in(sdrun, rootfs, *options, "--", "/bin/sh", "-c", script, check=check).stdout


def host_mount_table() -> str:
    return Path("/proc/self/mountinfo").read_text()


def journal_of(unit: str) -> str:
    command = ["journalctl", "-u", unit, "-o", "cat", "--no-pager"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def cap_mask(text: str, field: str) -> int:
    (line,) = [line for line in text.splitlines() if line.startswith(f"{field}:")]
    return int(line.split()[1], 16)


@pytest.fixture
def private_rootfs(rootfs: Path) -> Iterator[Path]:
    """A writable copy of the busybox rootfs that a test may booby-trap (on /var/lib/sdrun, a real filesystem)."""
    copy = STATE_BASE / f"rootfs-{uuid.uuid4().hex[:8]}"
    shutil.copytree(rootfs, copy, symlinks=True)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def test_the_app_is_pid_1_and_sees_only_its_own_processes(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(sdrun, rootfs, "echo $$; ps -o pid,comm; true").splitlines()  # true: sh must not exec ps
    assert output[0] == "1"
    assert [line.split() for line in output[2:]] == [["1", "sh"], ["2", "ps"]]  # nothing of the host


def test_exit_status_is_the_apps(sdrun: Sdrun, rootfs: Path) -> None:
    assert run_in(sdrun, rootfs, "--", "sh", "-c", "exit 7", check=False).returncode == 7


def test_hostname_and_etc_files(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(sdrun, rootfs, "hostname; cat /etc/hostname; grep -c box /etc/hosts", "--hostname", "box")
    assert output.split() == ["box", "box", "1"]


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


def test_default_seccomp_profile_denies_with_eperm(sdrun: Sdrun, rootfs: Path) -> None:
    # unshare(CLONE_NEWUSER) needs no capability: only the filter can refuse it.
    denied = shell(sdrun, rootfs, "unshare -U true 2>&1; echo status=$?")
    assert "Operation not permitted" in denied
    assert "status=1" in denied
    allowed = shell(sdrun, rootfs, "unshare -U true; echo status=$?", "--seccomp", "unconfined")
    assert "status=0" in allowed
    assert "Seccomp:\t0" in shell(sdrun, rootfs, "cat /proc/self/status", "--seccomp", "unconfined")


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


def test_read_only_root_and_tmpfs(sdrun: Sdrun, rootfs: Path) -> None:
    output = shell(
        sdrun, rootfs, "touch /x 2>/dev/null || echo ro; echo ok > /scratch/f && cat /scratch/f",
        "--read-only", "--tmpfs", "/scratch:size=1m",
    )  # fmt: skip
    assert output.split() == ["ro", "ok"]


def test_writes_go_to_the_pods_own_layer_not_the_shared_rootfs(sdrun: Sdrun, rootfs: Path) -> None:
    marker = f"marker-{uuid.uuid4().hex[:6]}"
    shell(sdrun, rootfs, f"echo hi > /{marker} && cat /{marker}")
    assert not (rootfs / marker).exists()


def test_no_sdrun_process_remains_and_mounts_stay_out_of_the_host_table(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    # sleep as PID 1 ignores SIGTERM (no handler): the stop timeout ends it.
    options = ("-d", "--name", name, "--stop-timeout", "1")
    pod_uuid = sdrun("run", *NS, *options, "--rootfs", str(rootfs), "--", "sleep", "100").stdout.strip()
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


def test_bad_capability_is_one_line_and_leaves_nothing(sdrun: Sdrun, rootfs: Path) -> None:
    result = run_in(sdrun, rootfs, "--cap-add", "NOT_A_CAP", "--", "true", check=False)
    assert result.returncode == 125
    assert result.stderr.startswith("sdrun: ") and len(result.stderr.splitlines()) == 1
    assert sdrun.pods() == []


def test_scope_mode(sdrun: Sdrun, rootfs: Path) -> None:
    result = sdrun("run", *NS, "--scope", "--rootfs", str(rootfs), "--", "sh", "-c", "echo $$; exit 4", check=False)
    assert (result.returncode, result.stdout.strip()) == (4, "1")
