"""The core path end to end: real systemd, real D-Bus, real journal, the fly stage1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sdrun.paths import Paths
from sdrun.pod import PodStore
from sdrun.spec import check_settings
from sdrun.specbuild import build_spec
from tests.conftest import SDRUN, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd
FLY = ("--stage1", "fly")  # for the few tests that check what only the fly stage1 shows


def pod_json(sdrun: Sdrun, name: str) -> dict[str, object]:
    pods = json.loads(sdrun("list", "--json").stdout)
    (found,) = [pod for pod in pods if pod["name"] == name]
    return dict(found)


def test_foreground_run_prints_output_and_exits_with_the_apps_status(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    result = sdrun(
        "run", "--name", name, "--rootfs", str(rootfs), "--", "/bin/sh", "-c", "echo hi; exit 3", check=False
    )
    assert result.returncode == 3
    assert result.stdout == "hi\n"
    assert sdrun("logs", name).stdout == "hi\n"
    pod = pod_json(sdrun, name)
    assert pod["state"] == "exited"
    assert pod["exit_status"] == 3
    assert pod["unit"] == f"sdrun-{name}.service"


def test_a_signal_killed_app_exits_128_plus_the_signal(sdrun: Sdrun, rootfs: Path) -> None:
    # fly: under the namespace stage1 the app is PID 1 of its namespace, which its own SIGKILL cannot kill.
    result = sdrun("run", *FLY, "--rootfs", str(rootfs), "--", "sh", "-c", "kill -9 $$", check=False)
    assert result.returncode == 128 + 9


def test_ten_thousand_lines_all_reach_stdout_logs_and_journalctl(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    expected = [str(number) for number in range(1, 10_001)]
    result = sdrun("run", "--name", name, "--rootfs", str(rootfs), "--", "seq", "1", "10000", timeout=120)
    assert result.stdout.splitlines() == expected
    assert sdrun("logs", name).stdout.splitlines() == expected
    journal = subprocess.run(
        ["journalctl", "-u", f"sdrun-{name}.service", "-o", "cat", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [line for line in journal if line.isdigit()] == expected
    assert sdrun("logs", "-n", "3", name).stdout.splitlines() == expected[-3:]


def test_rm_flag_removes_pod_and_unit(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "--rm", "--name", name, "--rootfs", str(rootfs), "--", "/bin/true")
    assert sdrun.pods() == []
    assert not (sdrun.root / "names" / name).exists()
    assert systemctl_show(f"sdrun-{name}.service", "LoadState")["LoadState"] == "not-found"


@pytest.mark.parametrize("stage1", ["namespace", "fly"])
def test_rm_run_exits_with_the_apps_status_read_from_the_unit(sdrun: Sdrun, rootfs: Path, stage1: str) -> None:
    """A foreground --rm unit writes no exit record: the status comes from the unit stage0 holds."""
    result = sdrun("run", "--rm", "--stage1", stage1, "--rootfs", str(rootfs), "--", "sh", "-c", "exit 7", check=False)
    assert result.returncode == 7
    assert sdrun.pods() == []


SIGPIPE_AND_SIGXFSZ = 1 << 12 | 1 << 24  # bits (signal - 1) of /proc/PID/status's SigIgn


@pytest.mark.parametrize(
    "options",
    [
        ("--stage1", "namespace", "--net", "none"),
        ("--stage1", "namespace", "--net", "none", "--init"),
        ("--stage1", "namespace", "--net", "none", "--scope"),
        ("--stage1", "fly"),  # systemd execs the app
        ("--stage1", "fly", "-v", "/run:/run:ro"),  # the fly entry does (a volume, on a mount point it has)
    ],
    ids=["namespace", "init", "scope", "fly", "fly-entry"],
)
def test_the_app_gets_sigpipe_as_from_a_shell(sdrun: Sdrun, rootfs: Path, options: tuple[str, ...]) -> None:
    """The interpreter of a stage1 ignores SIGPIPE and SIGXFSZ, as systemd does SIGPIPE: an ignored
    signal stays so across execve(), and `yes | head -n 1` would end with a write error."""
    script = "yes | head -n 1; grep SigIgn /proc/self/status"
    result = sdrun("run", "--rm", *options, "--rootfs", str(rootfs), "--", "sh", "-c", script)
    first, ignored = result.stdout.splitlines()
    assert first == "y" and result.stderr == ""
    assert int(ignored.split()[1], 16) & SIGPIPE_AND_SIGXFSZ == 0


def test_detached_rm_removes_the_pod_when_the_app_ends(sdrun: Sdrun, rootfs: Path) -> None:
    sdrun("run", "-d", "--rm", "--rootfs", str(rootfs), "--", "sleep", "0.2")
    wait_for(lambda: sdrun.pods() == [])


@pytest.mark.parametrize("stage1", ["namespace", "fly"])
def test_detached_run_of_an_app_that_ends_at_once(sdrun: Sdrun, rootfs: Path, stage1: str) -> None:
    """The unit may be gone before `run -d` looks at its processes: that is no error."""
    for _ in range(5):
        sdrun("run", "-d", "--rm", "--stage1", stage1, "--rootfs", str(rootfs), "--", "/bin/true")
    wait_for(lambda: sdrun.pods() == [])


def test_detached_pod_lifecycle_stop_kill_rm_gc(sdrun: Sdrun, rootfs: Path) -> None:
    first, second = unique_name("stop"), unique_name("kill")
    for name in (first, second):
        # fly: as PID 1 of a namespace, sleep would ignore systemd's SIGTERM.
        uuid = sdrun("run", *FLY, "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300").stdout.strip()
        assert len(uuid) == 36
        assert pod_json(sdrun, name)["state"] == "running"

    sdrun("stop", first)
    assert pod_json(sdrun, first)["state"] == "exited"
    assert pod_json(sdrun, first)["exit_status"] == 128 + 15  # sleep dies of systemd's SIGTERM

    assert sdrun("rm", second, check=False).returncode == 125  # running: refused without -f
    sdrun("kill", "-s", "KILL", second)
    wait_for(lambda: pod_json(sdrun, second)["state"] != "running")
    assert pod_json(sdrun, second)["exit_status"] == 128 + 9

    sdrun("rm", first)
    assert [pod["name"] for pod in json.loads(sdrun("list", "--json").stdout)] == [second]
    assert f"removed {second}" in sdrun("gc").stdout
    assert sdrun.pods() == []


def test_logs_follow_a_pod_until_it_ends(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    script = "for i in 1 2 3; do echo line $i; sleep 0.7; done; echo last"
    sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), "--", "sh", "-c", script)
    followed = sdrun("logs", "-f", name, timeout=30)  # returns by itself once the pod has ended
    assert followed.stdout.splitlines() == ["line 1", "line 2", "line 3", "last"]
    past = sdrun("logs", "-f", "--until", "2000-01-01", "--all", timeout=30)
    assert past.returncode == 0 and past.stdout == ""


def test_logs_of_removed_pods_by_name_and_uuid_prefix(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    app = ("--rootfs", str(rootfs), "--", "echo")
    first = sdrun("run", "-d", "--name", name, *app, "first").stdout.strip()
    wait_for(lambda: pod_json(sdrun, name)["state"] == "exited")
    sdrun("rm", name)
    assert sdrun("logs", name).stdout == "first\n"
    assert sdrun("logs", first[:8]).stdout == "first\n"  # the prefix `list` showed
    sdrun("run", "--name", name, *app, "second")
    assert sdrun("logs", name).stdout == "second\n"  # the pod of that name, while it is there
    sdrun("rm", name)
    assert sdrun("logs", name).stdout == "second\n"  # the latest of that name once removed
    assert sdrun("logs", first[:6]).stdout == "first\n"

    other_root = Sdrun(sdrun.root.with_name(f"{sdrun.root.name}-other"))  # its pods are not this root's
    other_root("run", "--rm", "--name", f"{name}-elsewhere", *app, "elsewhere")
    shutil.rmtree(other_root.root)
    assert_clean_failure(sdrun, sdrun("logs", f"{name}-elsewhere", check=False), f"no such pod: '{name}-elsewhere'")

    sdrun("run", "--rm", "--name", first[:8], *app, "named like a prefix")  # a removed pod's name...
    ambiguous = sdrun("logs", first[:8], check=False)  # ... and the other's UUID prefix
    assert_clean_failure(sdrun, ambiguous, f"'{first[:8]}' matches 2 pods: ")
    assert first in ambiguous.stderr and "(hint: give more of the UUID, or all of it)" in ambiguous.stderr
    assert sdrun("logs", first).stdout == "first\n"


def test_logs_refuse_a_uuid_prefix_two_removed_pods_share(sdrun: Sdrun) -> None:
    """Two UUIDs with one prefix, which random ones rarely have: lines as a pod's unit tags them."""
    pods = ["0123abcd-0000-4000-8000-000000000001", "0123abcd-0000-4000-8000-000000000002"]
    for pod_uuid in pods:
        fields = f"MESSAGE=from {pod_uuid}\nSYSLOG_IDENTIFIER=p\nSDRUN_POD={pod_uuid}\nSDRUN_ROOT={sdrun.root}\n"
        subprocess.run(["logger", "--journald"], input=fields, text=True, check=True)
    subprocess.run(["journalctl", "--sync"], check=True)
    for prefix in ("0123", pods[0][:-1]):
        result = sdrun("logs", prefix, check=False)
        assert_clean_failure(sdrun, result, f"'{prefix}' matches 2 pods: {pods[0]}, {pods[1]}")
    assert sdrun("logs", pods[0]).stdout == f"from {pods[0]}\n"
    assert sdrun("logs", "p").stdout == f"from {pods[1]}\n"  # by name: the latest


def test_gc_leaves_a_pod_alone_while_its_creator_holds_it(sdrun: Sdrun, rootfs: Path) -> None:
    """A `run` creates its pod locked, so that a concurrent gc never takes it for a dead one."""
    spec = build_spec(check_settings({"rootfs": str(rootfs)}, "test"), default_name="new", default_stage1="fly")
    store = PodStore(Paths(sdrun.root))
    pod = store.create(spec)  # this process now holds its lock, as `sdrun run` does while starting it
    (sdrun.root / "pods" / ".new-crashed").mkdir()  # a creation whose process died
    assert sdrun("gc").stdout == f"removed {sdrun.root}/pods/.new-crashed\n"
    assert sdrun.pods() == [pod.uuid] and sdrun.names() == ["new"]
    with pod.locked():  # the creator's own first lock is the one it already holds
        assert "is busy" in sdrun("rm", "new", check=False).stderr
    assert f"removed new ({pod.uuid})" in sdrun("gc").stdout


def test_rm_force_kills_a_running_pod(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300")
    sdrun("rm", "-f", name)
    assert sdrun.pods() == []
    assert systemctl_show(f"sdrun-{name}.service", "ActiveState")["ActiveState"] == "inactive"


def test_pod_is_found_by_uuid_prefix(sdrun: Sdrun, rootfs: Path) -> None:
    uuid = sdrun("run", "-d", "--rootfs", str(rootfs), "--", "sleep", "300").stdout.strip()
    assert json.loads(sdrun("status", "--json", uuid[:8]).stdout)["uuid"] == uuid
    sdrun("rm", "-f", uuid[:8])


def test_status_shows_a_time_a_command_line_and_variables(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "-d", "--name", name, "-e", "MODE=a b", "--label", "tier=web", "--rootfs", str(rootfs), "--",
          "sh", "-c", "echo 'it is'; sleep 300")  # fmt: skip
    lines = sdrun("status", name).stdout.splitlines()
    created = json.loads(sdrun("status", "--json", name).stdout)["created"]
    assert isinstance(created, float)  # --json keeps the epoch, for programs
    assert f"created: {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(created))}" in lines
    assert """command: sh -c 'echo '"'"'it is'"'"'; sleep 300'""" in lines
    env = lines[lines.index("env:") + 1 : lines.index("env:") + 3]
    assert env == ["  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "  MODE='a b'"]
    assert lines[lines.index("labels:") + 1] == "  tier=web"
    assert not [line for line in lines if "[" in line or "{" in line]


def test_no_sdrun_process_stays_beside_the_app(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300")
    main_pid = int(systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"])
    # READY=1 comes a few instructions before the entry's final execve()
    wait_for(lambda: Path(f"/proc/{main_pid}/comm").read_text().strip() == "sleep", timeout=2)
    cgroup = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{main_pid}/cgroup").read_text().splitlines()
        if line.split(":")[1] == "name=systemd"
    )
    assert cgroup.endswith(f"sdrun-{name}.service")
    procs = Path(f"/sys/fs/cgroup/systemd{cgroup}/cgroup.procs").read_text().split()
    assert procs == [str(main_pid)]
    status = json.loads(sdrun("status", "--json", name).stdout)
    assert status["main_pid"] == main_pid


def test_a_multi_line_command_is_one_row_of_list_shell_quoted(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    script = "echo 'a b'\nexit 3"
    sdrun("run", "-d", "--name", name, "--net", "none", "--rootfs", str(rootfs), "--", "sh", "-c", script)
    wait_for(lambda: pod_json(sdrun, name)["state"] == "exited")
    lines = sdrun("list").stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"{str(pod_json(sdrun, name)['uuid'])[:8]}  {name}  exited (3)  ")
    assert lines[1].endswith("  sh -c 'echo '\"'\"'a b'\"'\"'\\nexit 3'")
    assert "\ncommand: sh -c 'echo '\"'\"'a b'\"'\"'\\nexit 3'\n" in sdrun("status", name).stdout
    assert pod_json(sdrun, name)["command"] == ["sh", "-c", script]  # --json keeps it as it is
    sdrun("rm", name)


def test_an_oom_kill_shows_as_such_in_list_and_status(sdrun: Sdrun, rootfs: Path) -> None:
    """systemd says oom-kill from cgroup v2's memory.events; on a hybrid host (memory on v1) the exit
    record finds the kill in the unit's v1 memory.oom_control, where systemd says only signal."""
    name = unique_name()
    app = ("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")  # a 64M buffer, under 16M
    sdrun("run", "-d", "--name", name, "--memory", "16M", "--net", "none", "--rootfs", str(rootfs), "--", *app)
    wait_for(lambda: pod_json(sdrun, name)["state"] == "failed")
    pod = pod_json(sdrun, name)
    assert (pod["result"], pod["exit_status"]) == ("oom-kill", 137)
    (row,) = [line for line in sdrun("list").stdout.splitlines() if f" {name} " in line]
    assert " failed (137): oom-kill " in row
    assert "\nresult: oom-kill (the kernel's OOM killer ended the app" in sdrun("status", name).stdout
    sdrun("rm", name)
    killed = unique_name()  # a SIGKILL that is no OOM kill stays a signal
    sdrun(
        "run", "-d", "--name", killed, "--memory", "16M", "--net", "none", "--rootfs", str(rootfs), "--", "sleep", "100"
    )
    sdrun("kill", killed)
    wait_for(lambda: pod_json(sdrun, killed)["state"] == "exited")
    assert (pod_json(sdrun, killed)["result"], pod_json(sdrun, killed)["exit_status"]) == ("signal", 137)
    sdrun("rm", killed)


def test_restart_on_failure_is_done_by_systemd(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    script = "n=$(cat /state/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/n; [ $n -ge 3 ]"
    name = unique_name()
    sdrun("run", "-d", "--name", name, "--restart", "on-failure", "-v", f"{state}:/state", "--rootfs", str(rootfs),
          "--", "sh", "-c", script)  # fmt: skip
    wait_for(lambda: pod_json(sdrun, name)["state"] == "exited" and (state / "n").read_text().strip() == "3")
    assert pod_json(sdrun, name)["exit_status"] == 0


@pytest.mark.parametrize(("app", "status", "result"), [("true", 0, "start-limit-hit"), ("false", 1, "exit-code")])
def test_restarts_systemd_gave_up_show_in_list_and_status_until_rm(
    sdrun: Sdrun, rootfs: Path, app: str, status: int, result: str
) -> None:
    """An app that ends at once is started 5 times in 10 s, then systemd stops: the record says
    exited (N), but the pod's unit stays failed for list and status to show. Its Result says
    start-limit-hit only if the app succeeded: systemd keeps the first failure's over it."""
    name = unique_name()
    unit = f"sdrun-{name}.service"
    sdrun("run", "-d", "--name", name, "--restart", "always", "--rootfs", str(rootfs), "--", f"/bin/{app}")
    wait_for(lambda: pod_json(sdrun, name)["state"] == "failed")
    pod = pod_json(sdrun, name)
    assert (pod["result"], pod["exit_status"]) == ("start-limit-hit", status)
    assert systemctl_show(unit, "Result", "NRestarts") == {"Result": result, "NRestarts": "5"}
    (row,) = [line for line in sdrun("list").stdout.splitlines() if f" {name} " in line]
    assert f" failed ({status}): start-limit-hit " in row
    assert "\nresult: start-limit-hit (systemd stopped restarting the app" in sdrun("status", name).stdout
    sdrun("rm", name)
    assert systemctl_show(unit, "LoadState")["LoadState"] == "not-found"


def test_a_restarting_pod_stopped_by_hand_is_no_start_limit_hit(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    name = unique_name()
    app = ("sh", "-c", "trap 'exit 3' TERM; touch /state/up; sleep 100 & wait")
    volume = ("-v", f"{tmp_path}:/state")
    sdrun("run", "-d", "--name", name, "--restart", "always", *volume, "--rootfs", str(rootfs), "--", *app)
    wait_for((tmp_path / "up").exists)
    sdrun("stop", name)
    pod = pod_json(sdrun, name)
    assert (pod["state"], pod["result"], pod["exit_status"]) == ("failed", "exit-code", 3)
    sdrun("rm", name)


def test_restart_sec_spaces_the_restarts_out(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    unit = f"sdrun-{name}.service"
    sdrun("run", "-d", "--name", name, "--restart", "on-failure", "--restart-sec", "2.5", "--rootfs", str(rootfs),
          "--", "/bin/false")  # fmt: skip
    assert systemctl_show(unit, "RestartUSec")["RestartUSec"] == "2.500000s"
    time.sleep(3)  # systemd's 0.1 s would have given up by now, after 5 restarts
    assert int(systemctl_show(unit, "NRestarts")["NRestarts"]) in (1, 2)
    assert pod_json(sdrun, name)["state"] == "starting"  # waiting to restart
    sdrun("rm", "-f", name)


def test_memory_limit_is_the_units_memorymax_and_is_enforced(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "-d", "--name", name, "--memory", "64M", "--rootfs", str(rootfs), "--", "sleep", "300")
    assert systemctl_show(f"sdrun-{name}.service", "MemoryMax")["MemoryMax"] == str(64 << 20)
    main_pid = systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"]
    memory_cgroup = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{main_pid}/cgroup").read_text().splitlines()
        if ":memory:" in line
    )
    limit = Path(f"/sys/fs/cgroup/memory{memory_cgroup}/memory.limit_in_bytes").read_text()
    assert int(limit) == 64 << 20
    sdrun("rm", "-f", name)

    hog = sdrun("run", "--memory", "64M", "--rootfs", str(rootfs), "--",
                "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1", check=False)  # fmt: skip
    assert hog.returncode == 128 + 9  # the kernel's OOM killer ended it


def test_cpu_and_pids_limits_reach_the_unit(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "-d", "--name", name, "--cpus", "0.5", "--pids-limit", "7", "--rootfs", str(rootfs), "--",
          "sleep", "300")  # fmt: skip
    shown = systemctl_show(f"sdrun-{name}.service", "CPUQuotaPerSecUSec", "TasksMax")
    assert shown == {"CPUQuotaPerSecUSec": "500ms", "TasksMax": "7"}
    fork_bomb = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait"
    result = sdrun("run", "--pids-limit", "4", "--rootfs", str(rootfs), "--", "sh", "-c", fork_bomb, check=False)
    assert "can't fork" in result.stdout or "Resource temporarily unavailable" in result.stdout


def test_pods_have_a_default_pids_limit_that_zero_lifts(sdrun: Sdrun, rootfs: Path) -> None:
    name, unlimited = unique_name(), unique_name()
    sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300")
    assert systemctl_show(f"sdrun-{name}.service", "TasksMax") == {"TasksMax": "2048"}  # podman's default
    sdrun("run", "-d", "--name", unlimited, "--pids-limit", "0", "--rootfs", str(rootfs), "--", "sleep", "300")
    assert systemctl_show(f"sdrun-{unlimited}.service", "TasksMax") == {"TasksMax": "infinity"}
    sdrun("rm", "-f", name, unlimited)


def test_an_apps_output_cannot_choose_its_journal_priority(sdrun: Sdrun, rootfs: Path) -> None:
    """journald takes a line's `<N>` prefix as its priority unless told otherwise: an app's `<0>`
    would be stored as an emergency (and shown on every terminal)."""
    from sdrun.systemd import journal

    name = unique_name()
    sdrun("run", "--name", name, "--rootfs", str(rootfs), "--", "sh", "-c", "echo '<0>hi'; echo '<1>there' >&2")
    reader = journal.PodJournal(str(pod_json(sdrun, name)["uuid"]))
    try:
        journal.synchronize()
        stored = {entry.message: entry.fields["PRIORITY"] for entry in reader.entries_with_fields()}
    finally:
        reader.close()
    assert stored == {b"<0>hi": b"6", b"<1>there": b"6"}  # info, the unit's SyslogLevel=, for both streams
    sdrun("rm", name)


def test_env_workdir_user_and_volumes(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\n")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the app runs as uid 1000
    (data / "in").write_text("from host\n")
    script = "echo $GREETING $FROM_FILE; pwd; id -u; id -g; cat /data/in; echo out > /data/out; touch /ro/x"
    result = sdrun("run", "-e", "GREETING=hello", "--env-file", str(env_file), "-w", "/tmp", "-u", "user",
                   "-v", f"{data}:/data", "-v", f"{data}:/ro:ro", "--rootfs", str(rootfs), "--", "sh", "-c", script,
                   check=False)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[:5] == ["hello yes", "/tmp", "1000", "1000", "from host"]
    assert "Read-only file system" in result.stdout
    assert result.returncode == 1
    assert (data / "out").read_text() == "out\n"
    numeric = sdrun("run", "-u", "1234:5", "--rootfs", str(rootfs), "--", "sh", "-c", "id -u; id -g")
    assert numeric.stdout.split() == ["1234", "5"]


def test_env_file_bare_names_take_sdruns_variables_and_bad_lines_are_refused(
    sdrun: Sdrun, rootfs: Path, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("\n  # indented comment\nFROM_SDRUN\nUNSET_IN_SDRUN\nPLAIN=a b\n")
    env = {key: value for key, value in os.environ.items() if key != "UNSET_IN_SDRUN"} | {"FROM_SDRUN": "passed"}
    script = 'echo "$FROM_SDRUN|$PLAIN|${UNSET_IN_SDRUN-unset}"'
    result = sdrun(
        "run", "--rm", "--env-file", str(env_file), "--rootfs", str(rootfs), "--", "sh", "-c", script, env=env
    )
    assert result.stdout == "passed|a b|unset\n"
    for bad in ("export A=1", "=value", "A B=1", "not a variable"):
        env_file.write_text(f"A=1\n# fine\n{bad}\n")
        refused = sdrun("run", "--env-file", str(env_file), "--rootfs", str(rootfs), "--", "true", check=False)
        assert_clean_failure(
            sdrun, refused, f"invalid line 3 of env file {env_file}: '{bad}': expected KEY=VALUE or KEY"
        )


def test_spec_file(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    name = unique_name("spec")
    spec = tmp_path / "web.toml"
    spec.write_text(
        f'name = "{name}"\nrootfs = "{rootfs}"\nexec = ["sh", "-c", "echo $COLOUR; exit 4"]\n'
        'env = { COLOUR = "blue" }\nmemory = "128M"\n'
    )
    result = sdrun("run", "--spec", str(spec), check=False)
    assert (result.returncode, result.stdout) == (4, "blue\n")
    overridden = sdrun("run", "--spec", str(spec), "--name", f"{name}-2", "-e", "COLOUR=red", check=False)
    assert overridden.stdout == "red\n"


def test_scope_runs_attached_in_a_transient_scope(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    # fly: a cgroup namespace would show the pod's cgroup as "/".
    result = sdrun("run", *FLY, "--scope", "--name", name, "--rootfs", str(rootfs), "--",
                   "sh", "-c", "grep name=systemd /proc/self/cgroup; exit 5", check=False)  # fmt: skip
    assert result.returncode == 5
    assert result.stdout.strip().endswith(f"/machine.slice/sdrun-{name}.scope")
    assert (pod_json(sdrun, name)["state"], pod_json(sdrun, name)["exit_status"]) == ("exited", 5)
    killed = sdrun("run", *FLY, "--scope", "--rootfs", str(rootfs), "--", "sh", "-c", "kill -9 $$", check=False)
    assert killed.returncode == 137
    listing = json.loads(sdrun("list", "--json").stdout)
    assert sorted((pod["state"], pod["exit_status"]) for pod in listing) == [("exited", 5), ("exited", 137)]


def test_enter_runs_inside_the_pod_and_its_cgroup(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", *FLY, "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300")  # no cgroup namespace
    result = sdrun("enter", name, "--", "sh", "-c", "grep ^user: /etc/passwd; grep name=systemd /proc/self/cgroup")
    passwd, cgroup = result.stdout.splitlines()
    assert passwd.startswith("user:x:1000")  # the container's /etc/passwd, not the host's
    assert cgroup.endswith(f"/machine.slice/sdrun-{name}.service")
    assert sdrun("enter", name, "--", "sh", "-c", "exit 7", check=False).returncode == 7


@pytest.mark.parametrize("stage1", [("--stage1", "namespace", "--net", "none"), FLY], ids=["namespace", "fly"])
def test_enter_runs_as_the_user_resolved_at_the_start(sdrun: Sdrun, private_rootfs: Path, stage1: tuple[str]) -> None:
    """An image whose /etc/passwd its app user may write (OpenShift-style): the app makes itself uid 0
    there; `enter` (and a health check) still runs as the app's uid, not as root with its capabilities."""
    (private_rootfs / "etc" / "passwd").chmod(0o666)
    name = unique_name()
    promote = "sed s/^user:x:1000:1000:/user:x:0:0:/ /etc/passwd > /tmp/p && cat /tmp/p > /etc/passwd; sleep 100"
    sdrun(
        "run",
        *stage1,
        "-d",
        "--name",
        name,
        "--user",
        "user",
        "--rootfs",
        str(private_rootfs),
        "--",
        "sh",
        "-c",
        promote,
    )
    wait_for(lambda: "user:x:0:0" in sdrun("enter", name, "--", "cat", "/etc/passwd").stdout)
    assert sdrun("enter", name, "--", "id", "-u").stdout.strip() == "1000"
    sdrun("rm", "-f", name)


# --- bad input: one line, exit 125, nothing left behind ---


def assert_clean_failure(sdrun: Sdrun, result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 125, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("sdrun: "), result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert sdrun.pods() == [] and sdrun.names() == []
    assert sdrun.new_units() == set()


def test_a_user_other_than_root_is_told_in_one_line_that_sdrun_needs_root(sdrun: Sdrun, rootfs: Path) -> None:
    """Not an internal error (PermissionError on the state) nor polkit's refusal of the unit."""
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", SDRUN, "--root", str(sdrun.root)]
    run = ["run", "--rm", "--net", "none", "--rootfs", str(rootfs), "--", "/bin/true"]
    for verb in (
        ["list"],
        run,
        ["run", "-d", *run[2:]],
        ["status", "x"],
        ["image", "list"],
        ["gc"],
        ["--debug", "list"],
    ):
        result = subprocess.run([*as_nobody, *verb], capture_output=True, text=True, check=False, timeout=60)
        assert_clean_failure(sdrun, result, "sdrun: sdrun needs root: its pods are systemd system services")
    assert subprocess.run([*as_nobody, "run", "--help"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rootfs", "/nonexistent", "--", "/bin/true"], "rootfs '/nonexistent' is not a directory"),
        (["--memory", "12Q", "--rootfs", "{rootfs}", "--", "/bin/true"], "invalid memory value '12Q'"),
        (["--restart", "sometimes", "--rootfs", "{rootfs}", "--", "/bin/true"], "invalid restart policy"),
        (["--restart-sec", "soon", "--rootfs", "{rootfs}", "--", "/bin/true"], "invalid restart_sec 'soon'"),
        (["--rootfs", "{rootfs}", "--", "/no/such/program"], "'/no/such/program' not found"),
        (  # there, but no program: execvp's EACCES, not a command not found
            ["--rootfs", "{rootfs}", "--", "/etc/passwd"],
            "'/etc/passwd' cannot be executed: permission denied (/etc/passwd is not executable)",
        ),
        (["--rootfs", "{rootfs}", "--", "/bin"], "'/bin' cannot be executed: permission denied (/bin is a directory)"),
        (
            ["-e", "PATH=/etc:/bin", "--rootfs", "{rootfs}", "--", "group"],
            "'group' cannot be executed: permission denied (/etc/group is not executable)",
        ),
        (["-v", "/nonexistent:/x", "--rootfs", "{rootfs}", "--", "/bin/true"], "volume source '/nonexistent'"),
        (["-u", "nobody-here", "--rootfs", "{rootfs}", "--", "/bin/true"], "user 'nobody-here' not found"),
        (["--name", "bad/name", "--rootfs", "{rootfs}", "--", "/bin/true"], "invalid pod name"),
        (["--stage1", "warp", "--rootfs", "{rootfs}", "--", "/bin/true"], "unknown stage1 'warp'"),
        (["--stage1", "fly", "--net", "none", "--rootfs", "{rootfs}", "--", "/bin/true"], "fly shares the host's"),
        (["--rm", "--restart", "always", "--rootfs", "{rootfs}", "--", "/bin/true"], "--rm and --restart always"),
        (
            ["-d", "--rm", "--restart=on-failure", "--rootfs", "{rootfs}", "--", "/bin/true"],
            "--rm and --restart on-failure conflict",
        ),
        (  # with --private-users, which click reads too
            ["--private-users", "--rm", "--restart", "always", "--rootfs", "{rootfs}", "--", "/bin/true"],
            "--rm and --restart always conflict",
        ),
        (  # the network's set-up, in the unit (a restarting pod's), is killed by the kernel's OOM
            # killer; a restart policy would start it again, and systemd would keep the unit once it gave up
            ["-d", "--restart", "always", "--memory", "8M", "--rootfs", "{rootfs}", "--", "/bin/true"],
            "was killed by a signal (hint: the pod's set-up runs under its --memory too",
        ),
        (
            ["--rm", "--pids-limit", "1", "--net", "none", "--rootfs", "{rootfs}", "--", "/bin/true"],
            "Resource temporarily unavailable (hint: the pod's set-up runs under its --pids-limit too",
        ),
    ],
)
def test_bad_run_input(sdrun: Sdrun, rootfs: Path, args: list[str], fragment: str) -> None:
    result = sdrun("run", *[arg.format(rootfs=rootfs) for arg in args], check=False)
    assert_clean_failure(sdrun, result, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--memroy", "1G", "--rootfs", "{rootfs}", "--", "/bin/true"],
         "No such option '--memroy'. (Did you mean one of: '--memory'"),  # begun without click, then click's
        (["--debug", "run", "--memroy", "1G", "--rootfs", "{rootfs}", "--", "/bin/true"],
         "No such option '--memroy'"),  # click's from the start; --debug adds no traceback to a usage error
        (["run", "--requires", "db", "--rootfs", "{rootfs}", "--", "/bin/true"],
         "sdrun: No such option '--requires'. Did you mean '--registries.d'? (hint: 'sdrun run --help')"),
        (["run", "--rootfs", "{rootfs}", "--name"], "Option '--name' requires an argument. (hint: 'sdrun run --help')"),
        (["run", "--rm=yes", "--rootfs", "{rootfs}", "--", "/bin/true"], "Option '--rm' does not take a value."),
        (["run", "--tls-verify=maybe", "img"], "Invalid value for '--tls-verify': 'maybe' is not a valid boolean"),
        (["network", "create", "x"], "Missing option '--subnet'. (hint: 'sdrun network create --help')"),
        (["logs", "-n", "abc", "pod"], "Invalid value for '-n' / '--lines'"),
        (["runn"], "No such command 'runn'. Did you mean 'run'? (hint: 'sdrun --help')"),
        (["image"], "Missing command. (hint: 'sdrun image --help')"),
        ([], "Missing command. (hint: 'sdrun --help')"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_too(sdrun: Sdrun, rootfs: Path, args: list[str], fragment: str) -> None:
    result = sdrun(*[arg.format(rootfs=rootfs) for arg in args], check=False)
    assert_clean_failure(sdrun, result, fragment)
    assert result.stdout == ""


def test_help_is_no_usage_error(sdrun: Sdrun) -> None:
    for args in (["--help"], ["run", "--help"], ["run", "-h"], ["image", "--help"], ["network", "create", "--help"]):
        result = sdrun(*args)
        assert result.stdout.startswith("Usage: sdrun") and result.stderr == ""


def test_unknown_spec_key_names_file_and_key(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(f'rootfs = "{rootfs}"\ncolour = "red"\n')
    result = sdrun("run", "--spec", str(spec), check=False)
    assert_clean_failure(sdrun, result, f"{spec}: unknown key 'colour'")


def test_a_root_that_is_a_file_is_named(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    run = ["run", "--rootfs", str(rootfs), "--", "/bin/true"]
    for root in (not_a_dir, not_a_dir / "below"):
        # run read without click and by click (--private-users), and other verbs
        for verb in (run, ["run", "--private-users", *run[1:]], ["list"], ["status", "x"], ["gc"], ["image", "list"]):
            result = sdrun("--root", str(root), *verb, check=False)
            assert_clean_failure(sdrun, result, f"root '{root}' is not a directory")
    from_env = subprocess.run([SDRUN, *run], env=dict(os.environ, SDRUN_ROOT=str(not_a_dir)), capture_output=True,
                              text=True, check=False)  # fmt: skip
    assert_clean_failure(sdrun, from_env, f"root '{not_a_dir}' is not a directory")


def test_rm_refuses_a_restart_policy_of_the_spec_file(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    spec = tmp_path / "restarting.toml"
    spec.write_text(f'rootfs = "{rootfs}"\nexec = ["/bin/true"]\nrestart = "always"\n')
    result = sdrun("run", "--rm", "--spec", str(spec), check=False)
    assert_clean_failure(sdrun, result, "--rm and --restart always conflict")
    assert sdrun("run", "--rm", "--spec", str(spec), "--restart", "no").returncode == 0


def test_a_spec_files_exec_string_is_refused_by_key(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    spec = tmp_path / "words.toml"
    spec.write_text(f'rootfs = "{rootfs}"\nexec = "echo a b"\n')
    result = sdrun("run", "--spec", str(spec), check=False)
    assert_clean_failure(sdrun, result, f"{spec}: invalid exec 'echo a b': expected a list of words")
    assert '(hint: exec = ["echo", "a", "b"])' in result.stderr


def test_unknown_pod(sdrun: Sdrun) -> None:
    for verb in (["stop"], ["kill"], ["rm"], ["status"], ["logs"], ["enter"]):
        result = sdrun(*verb, "no-such-pod", check=False)
        assert_clean_failure(sdrun, result, "no such pod: 'no-such-pod'")


def test_duplicate_name_is_refused(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name()
    sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300")
    result = sdrun("run", "--name", name, "--rootfs", str(rootfs), "--", "/bin/true", check=False)
    assert result.returncode == 125
    assert f"a pod named '{name}' already exists" in result.stderr
    assert len(sdrun.pods()) == 1


def test_no_bus_is_one_clear_line(sdrun: Sdrun, rootfs: Path) -> None:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="unix:path=/run/no-such-bus")
    result = sdrun("run", "--rootfs", str(rootfs), "--", "/bin/true", check=False, env=env)
    assert_clean_failure(sdrun, result, "cannot reach systemd's bus at /run/no-such-bus")
    listing = sdrun("list", check=False, env=env)
    assert listing.returncode == 125 and "/run/no-such-bus" in listing.stderr


def test_a_start_that_fails_inside_the_unit_says_why_and_leaves_nothing(sdrun: Sdrun, rootfs: Path) -> None:
    # The tmpfs options reach mount(2) only inside the unit, when the namespace stage1 sets the pod up.
    for mode in ([], ["-d"]):
        result = sdrun("run", *mode, "--tmpfs", "/scratch:size=lots", "--rootfs", str(rootfs), "--", "/bin/true",
                       check=False)  # fmt: skip
        assert_clean_failure(sdrun, result, "failed to start: sdrun stage1: mount tmpfs on /scratch: Invalid argument")


def test_signals_to_a_foreground_run_reach_the_app_and_a_second_one_stops_it(sdrun: Sdrun, rootfs: Path) -> None:
    # As PID 1 of its namespace, `sleep` ignores the forwarded SIGTERM; the second one stops the unit.
    name = unique_name()
    command = [SDRUN, "--root", str(sdrun.root), "run", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "300"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: systemctl_show(f"sdrun-{name}.service", "SubState")["SubState"] == "running")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + 9  # PID 1 ignored the stop signal too: SIGKILL after the timeout
    trap = "trap 'echo got INT; exit 4' INT; echo ready; while :; do sleep 0.1; done"
    command[-3:] = ["sh", "-c", trap]
    command[command.index(name)] = f"{name}-trap"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 4
    assert process.stdout.read() == "got INT\n"
