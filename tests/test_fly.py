"""The fly stage1 on the real systemd: a --rootfs pod runs with no stage1 process (systemd sets it
up: stage1/fly/native.py), and the pods it cannot set up keep the Python entry, with the same app."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import Sdrun, needs_systemd, systemctl_show, unique_name, wait_for
from tests.test_core import assert_clean_failure

pytestmark = needs_systemd
FLY = ("--stage1", "fly")
# What the app reports of itself; /proc/1/comm shows that /proc is the host's (PID 1 is systemd).
# One command a line: a `;` would keep the entry (systemd 252 cannot re-read it after a reload).
REPORT = "\n".join(
    [
        *("id -u", "id -g", "grep ^Groups: /proc/self/status", "pwd", "ulimit -Sn", "ulimit -Hn", "cat /proc/1/comm"),
        "env | grep -v ^PWD= | sort",
    ]
)
NOBODY = 65534  # in the busybox rootfs and in every host's user database


def main_command(name: str) -> str:
    """The unit's ExecStart= as systemd has it: `path=... ; argv[]=...`."""
    return systemctl_show(f"sdrun-{name}.service", "ExecStart")["ExecStart"]


def run_detached(sdrun: Sdrun, name: str, rootfs: Path, *options: str) -> int:
    """Start `sleep 300` in a fly pod; its unit's MainPID."""
    sdrun("run", "-d", "--name", name, *FLY, *options, "--rootfs", str(rootfs), "--", "sleep", "300")
    return int(systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"])


def test_a_fly_rootfs_pod_has_no_stage1_process(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("fly")
    main_pid = run_detached(sdrun, name, rootfs)
    command = main_command(name)
    assert "path=/bin/sleep" in command and "argv[]=sleep 300" in command and "python" not in command
    assert os.path.samestat(os.stat(f"/proc/{main_pid}/exe"), os.stat(rootfs / "bin" / "busybox"))
    assert Path(f"/proc/{main_pid}/cmdline").read_bytes() == b"sleep\x00300\x00"
    assert os.path.samestat(os.stat(f"/proc/{main_pid}/root"), os.stat(rootfs))
    unit = systemctl_show(f"sdrun-{name}.service", "Type", "ExecMainPID", "NotifyAccess")
    assert unit == {"Type": "exec", "ExecMainPID": str(main_pid), "NotifyAccess": "none"}
    sdrun("stop", name)
    assert json.loads(sdrun("list", "--json").stdout)[0]["exit_status"] == 128 + 15


def test_a_fly_rootfs_pods_exit_status_reaches_run_and_list(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("fly")
    result = sdrun(
        "run", "--name", name, *FLY, "--rootfs", str(rootfs), "--", "sh", "-c", "echo out; exit 3", check=False
    )
    assert (result.returncode, result.stdout) == (3, "out\n"), result.stderr
    (pod,) = json.loads(sdrun("list", "--json").stdout)
    assert (pod["state"], pod["exit_status"]) == ("exited", 3)


def report(sdrun: Sdrun, rootfs: Path, *options: str) -> list[str]:
    result = sdrun("run", "--rm", *FLY, *options, "--rootfs", str(rootfs), "--", "sh", "-c", REPORT)
    return result.stdout.splitlines()


def test_a_fly_app_sees_the_same_with_or_without_its_stage1_process(
    sdrun: Sdrun, private_rootfs: Path, tmp_path: Path
) -> None:
    """nobody, in the container's root group: ids the host knows, so systemd sets them up. A pod
    with a volume keeps the entry: both apps see the same user, workdir, limits and environment."""
    group = private_rootfs / "etc" / "group"
    group.write_text(group.read_text().replace("root:x:0:", "root:x:0:nobody"))
    options = ("-u", "nobody", "-w", "/tmp", "--ulimit", "nofile=900:1900", "-e", "GREETING=a b $c %d", "-e", "HOME=/h")
    native = report(sdrun, private_rootfs, *options)
    entry = report(sdrun, private_rootfs, *options, "-v", f"{tmp_path}:/mnt")
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    expected_tail = ["/tmp", "900", "1900", "systemd", "GREETING=a b $c %d", "HOME=/h", path, "SHLVL=1"]
    assert entry == [str(NOBODY), str(NOBODY), "Groups:\t0", *expected_tail]
    # systemd's initgroups(3) also lists the primary group among the supplementary ones: no other difference.
    assert native == [str(NOBODY), str(NOBODY), f"Groups:\t0 {NOBODY}", *expected_tail]


def test_a_fly_app_whose_ids_the_host_does_not_know_keeps_the_entry(sdrun: Sdrun, private_rootfs: Path) -> None:
    """systemd 252 refuses a User= missing from the host's user database, numeric or not."""
    with (private_rootfs / "etc" / "passwd").open("a") as passwd:
        passwd.write("stranger:x:4242:4242:stranger:/:/bin/sh\n")
    name = unique_name("fly")
    main_pid = run_detached(sdrun, name, private_rootfs, "-u", "stranger")
    assert "__import__('stage1.fly.__main__')" in main_command(name)
    wait_for(lambda: Path(f"/proc/{main_pid}/cmdline").read_bytes() == b"sleep\x00300\x00")  # the entry exec'd it
    assert os.stat(f"/proc/{main_pid}").st_uid == 4242
    sdrun("rm", "-f", name)


def test_fly_volumes_keep_the_entry_and_read_only_ones_refuse_writes(
    sdrun: Sdrun, rootfs: Path, tmp_path: Path
) -> None:
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("kept\n")
    volumes = ("-v", f"{tmp_path / 'rw'}:/data", "-v", f"{tmp_path / 'ro'}:/config:ro")
    script = "echo new > /data/file; cat /config/file; echo x 2>/dev/null > /config/file || echo refused"
    result = sdrun("run", "--rm", *FLY, *volumes, "--rootfs", str(rootfs), "--", "sh", "-c", script)
    assert result.stdout.splitlines() == ["kept", "refused"]
    assert (tmp_path / "rw" / "file").read_text() == "new\n"
    assert (tmp_path / "ro" / "file").read_text() == "kept\n"
    assert not Path("/data").exists() and not Path("/config").exists()  # nothing made at the host's paths


def test_a_fly_rootfs_whose_sys_links_out_of_it_keeps_the_entry_and_stays_inside(
    sdrun: Sdrun, private_rootfs: Path
) -> None:
    """systemd 252 would make and mount on what a linked /sys names from the host's root; the
    entry follows the link inside the root: the host's /sys is bound there, and the host untouched."""
    escape = f"fly-escape-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(private_rootfs / "sys")
    (private_rootfs / "sys").symlink_to("../../../../../../../../tmp/" + escape)
    name = unique_name("fly")
    result = sdrun("run", "--name", name, *FLY, "--rootfs", str(private_rootfs), "--", "ls", "/sys/kernel")
    (pod,) = sdrun.pods()
    assert (sdrun.root / "pods" / pod / "stage1" / "fly.plan").exists()  # the entry's plan: it ran
    assert "mm" in result.stdout.split()
    assert not Path("/tmp", escape).exists()
    assert (private_rootfs / "tmp" / escape).is_dir()  # the mount point the entry made, inside the root


def test_an_installed_fly_unit_runs_its_app_as_its_user_and_sdrun_as_root(sdrun: Sdrun, rootfs: Path) -> None:
    """The unit file says User=: sdrun's own ExecStartPre= (prepare) and ExecStartPost= must not run as it."""
    name = unique_name("fly")
    unit = f"sdrun-{name}.service"
    script = "id -u; ulimit -Hn; echo $GREETING; exec sleep 300"
    options = ("-u", "nobody", "--ulimit", "nofile=900:1900", "-e", "GREETING=a b $c %d")
    sdrun("install", name, *FLY, *options, "--rootfs", str(rootfs), "--", "sh", "-c", script)
    try:
        subprocess.run(["systemctl", "start", unit], check=True, capture_output=True)
        main_pid = int(systemctl_show(unit, "MainPID")["MainPID"])
        assert os.path.samestat(os.stat(f"/proc/{main_pid}/exe"), os.stat(rootfs / "bin" / "busybox"))
        assert os.stat(f"/proc/{main_pid}").st_uid == NOBODY
        wait_for(lambda: len(sdrun("logs", name).stdout.splitlines()) == 3)
        assert sdrun("logs", name).stdout.splitlines() == [str(NOBODY), "1900", "a b $c %d"]
    finally:
        sdrun("uninstall", name, check=False)


@pytest.mark.parametrize(
    "flag",
    [
        ("--hostname", "h"),
        ("--cap-drop", "ALL"),
        ("--cap-add", "NET_ADMIN"),
        ("--seccomp", "/usr/share/containers/seccomp.json"),
        ("--private-users",),
        ("--read-only",),
        ("--tmpfs", "/tmp"),
        ("--init",),
        ("--apparmor", "x"),
    ],
    ids=lambda flag: flag[0],
)
def test_isolation_flags_are_refused_not_ignored(sdrun: Sdrun, rootfs: Path, flag: tuple[str, ...]) -> None:
    """fly is a chroot with the host's privileges: `--cap-drop ALL` and the like would be a promise
    it does not keep. --scope too, whose scope exists before the backend runs."""
    for mode in ((), ("--scope",)):
        result = sdrun("run", *FLY, *mode, *flag, "--rootfs", str(rootfs), "--", "true", check=False)
        assert_clean_failure(sdrun, result, f"{flag[0]} needs the namespace stage1")


def test_seccomp_unconfined_is_what_fly_is(sdrun: Sdrun, rootfs: Path) -> None:
    result = sdrun("run", "--rm", *FLY, "--seccomp", "unconfined", "--rootfs", str(rootfs), "--", "true")
    assert result.returncode == 0
