"""The verbs a podman user reaches for on pods that exist: start, restart, run --replace; and
run's -i and -t, --version, list's -q, --filter and --format (issue 17). Real systemd throughout."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Sdrun, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd


def pod_json(sdrun: Sdrun, name: str) -> dict[str, object]:
    (found,) = [pod for pod in json.loads(sdrun("list", "--json").stdout) if pod["name"] == name]
    return dict(found)


# A counter in the pod's own writable layer: each run adds a line, so a start that re-made the pod
# from scratch (a new upper layer) would show 1 again.
COUNTING_APP = ("--", "sh", "-c", "echo run >> /runs; wc -l < /runs; trap exit TERM; sleep 1000 & wait")


def test_start_runs_a_stopped_pod_again_with_its_uuid_name_and_files(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("start")
    uuid = sdrun("run", "-d", "--name", name, "--net", "none", "--rootfs", str(rootfs), *COUNTING_APP).stdout.strip()
    sdrun("stop", name)
    assert pod_json(sdrun, name)["state"] == "exited"

    assert sdrun("start", name).stdout == f"{name}\n"
    pod = pod_json(sdrun, name)
    assert (pod["state"], pod["uuid"], pod["exit_status"]) == ("running", uuid, None)
    assert sdrun("run", "--rm", "--rootfs", str(rootfs), "--", "true").returncode == 0  # other pods unaffected
    wait_for(lambda: sdrun("logs", name).stdout.split() == ["1", "2"])

    result = sdrun("start", name, check=False)  # running already: one line, non-zero
    assert result.returncode == 125 and result.stderr.count("\n") == 1 and "is running" in result.stderr

    sdrun("restart", name)
    assert pod_json(sdrun, name)["state"] == "running"
    wait_for(lambda: sdrun("logs", name).stdout.split() == ["1", "2", "3"])
    assert sdrun.pods() == [uuid]


def test_start_of_a_pod_systemd_gave_up_restarting(sdrun: Sdrun, rootfs: Path) -> None:
    """Its unit stays failed (start-limit-hit) until reset: start resets it and starts anew."""
    name = unique_name("limit")
    sdrun("run", "-d", "--name", name, "--net", "none", "--restart", "always", "--rootfs", str(rootfs), "--", "true")
    wait_for(lambda: pod_json(sdrun, name)["state"] == "failed")
    sdrun("start", name)
    assert systemctl_show(f"sdrun-{name}.service", "NRestarts")["NRestarts"] == "0"  # a new unit
    wait_for(lambda: pod_json(sdrun, name)["state"] == "failed")  # and it gives up again


def test_start_on_the_default_network_gets_an_address_again(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("net")
    sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), *COUNTING_APP)
    sdrun("stop", name)
    assert pod_json(sdrun, name)["ip"] is None  # the tear-down released the lease
    sdrun("start", name)
    assert pod_json(sdrun, name)["ip"]
    result = sdrun("enter", name, "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert str(pod_json(sdrun, name)["ip"]) in result.stdout


def test_start_of_an_image_pod_keeps_its_layers_and_writes(sdrun: Sdrun, rootfs: Path) -> None:
    import tarfile

    tarball = sdrun.root / "rootfs.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(rootfs, arcname=".")
    sdrun("image", "import", "--rootfs-tar", str(tarball), "localhost/counting:1")
    name = unique_name("image")
    sdrun("run", "-d", "--name", name, "--net", "none", "localhost/counting:1", *COUNTING_APP)
    sdrun("stop", name)
    sdrun("start", name)
    wait_for(lambda: sdrun("logs", name).stdout.split() == ["1", "2"])
    assert pod_json(sdrun, name)["image"] == "localhost/counting:1"


@pytest.mark.parametrize("verb", ["start", "restart"])
def test_start_and_restart_of_an_unknown_pod(sdrun: Sdrun, verb: str) -> None:
    result = sdrun(verb, "no-such-pod", check=False)
    assert result.returncode == 125
    assert result.stderr == "sdrun: no such pod: 'no-such-pod' (hint: 'sdrun list' shows the pods)\n"


def test_a_scope_pod_cannot_be_started_again(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("scope")
    sdrun("run", "--scope", "--name", name, "--net", "none", "--rootfs", str(rootfs), "--", "true")
    result = sdrun("start", name, check=False)
    assert result.returncode == 125 and "ran in a scope" in result.stderr


def test_run_replace_removes_the_pod_of_that_name_first(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("replace")
    first = sdrun("run", "-d", "--name", name, "--net", "none", "--rootfs", str(rootfs), *COUNTING_APP).stdout
    refused = sdrun("run", "-d", "--name", name, "--rootfs", str(rootfs), "--", "true", check=False)
    assert refused.returncode == 125 and "already exists" in refused.stderr
    for _ in range(2):  # a running pod, then an ended one
        second = sdrun("run", "--replace", "--name", name, "--net", "none", "--rootfs", str(rootfs), "--", "true")
        assert second.returncode == 0
    assert first.strip() not in sdrun.pods() and len(sdrun.pods()) == 1
    assert pod_json(sdrun, name)["state"] == "exited"
    # Without a pod of that name, --replace is a plain run (and the fast parser's path, too).
    sdrun("run", "--rm", "--replace", "--name", unique_name(), "--rootfs", str(rootfs), "--", "true")


def test_start_and_restart_of_an_installed_pod_go_to_its_unit(sdrun: Sdrun, rootfs: Path, installed: list[str]) -> None:
    name = unique_name("inst")
    unit = f"sdrun-{name}.service"
    sdrun("install", "--now", name, "--net", "none", "--rootfs", str(rootfs), *COUNTING_APP)
    installed.append(name)
    first = systemctl_show(unit, "InvocationID")["InvocationID"]
    sdrun("restart", name)
    second = systemctl_show(unit, "InvocationID", "ActiveState")
    assert second["InvocationID"] != first and second["ActiveState"] == "active"
    assert "is running" in sdrun("start", name, check=False).stderr
    sdrun("stop", name)
    sdrun("start", name)
    assert systemctl_show(unit, "ActiveState")["ActiveState"] == "active"
    assert systemctl_show(unit, "Transient")["Transient"] == "no"  # still the installed unit
    refused = sdrun("run", "--replace", "--name", name, "--rootfs", str(rootfs), "--", "true", check=False)
    assert refused.returncode == 125 and "installed unit" in refused.stderr


def test_start_of_an_installed_pod_that_never_ran(sdrun: Sdrun, rootfs: Path, installed: list[str]) -> None:
    name = unique_name("fresh")
    sdrun("install", name, "--net", "none", "--rootfs", str(rootfs), *COUNTING_APP)
    installed.append(name)
    assert sdrun.pods() == []  # no start yet: no pod directory
    assert sdrun("start", name).stdout == f"{name}\n"
    assert systemctl_show(f"sdrun-{name}.service", "ActiveState")["ActiveState"] == "active"
    assert pod_json(sdrun, name)["state"] == "running"


# --- run -i and -t ---


@pytest.mark.parametrize("stage1", ["namespace", "fly"])
def test_run_i_gives_the_app_stdin_and_its_exit_status(sdrun: Sdrun, rootfs: Path, stage1: str) -> None:
    result = sdrun(
        "run",
        "--rm",
        "-i",
        "--stage1",
        stage1,
        "--rootfs",
        str(rootfs),
        "--",
        "sh",
        input="echo hi; exit 4",
        check=False,
    )
    assert (result.returncode, result.stdout) == (4, "hi\n")
    # The output still goes through the journal, for `logs` to show.
    name = unique_name("stdin")
    result = sdrun("run", "-i", "--name", name, "--stage1", stage1, "--rootfs", str(rootfs), "--", "tr", "a-z", "A-Z",
                   input="abc\n")  # fmt: skip
    assert result.stdout == "ABC\n"
    assert sdrun("logs", name).stdout == "ABC\n"


def test_without_i_the_app_reads_nothing(sdrun: Sdrun, rootfs: Path) -> None:
    result = sdrun("run", "--rm", "--rootfs", str(rootfs), "--", "sh", input="echo hi; exit 4", check=False)
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-d", "-i"], "not with --detach"),
        (["-t", "--restart", "always"], "a restarted app would have no terminal"),
        (["-t", "--stage1", "fly"], "cannot give the app a terminal"),
        (["-i", "--stage1", "kvm"], "does not give the app its stdin"),
    ],
)
def test_bad_attachments_are_refused_and_leave_nothing(
    sdrun: Sdrun, rootfs: Path, args: list[str], fragment: str
) -> None:
    result = sdrun("run", *args, "--rootfs", str(rootfs), "--", "true", check=False)
    assert result.returncode == 125 and fragment in result.stderr and result.stderr.count("\n") == 1
    assert sdrun.pods() == [] and sdrun.new_units() == set()


def run_on_a_terminal(
    argv: list[str],
    typed: bytes,
    rows: int = 33,
    columns: int = 77,
    before_typing: Callable[[subprocess.Popen[bytes], int], None] | None = None,
) -> tuple[int, bytes]:
    """Run argv with a pseudo-terminal of the given size as its stdin, stdout and stderr, type
    `typed` once it has said READY (after before_typing(process, terminal)); its exit status, and
    what it wrote."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    slave_copy = slave  # kept open for before_typing's resizes
    output = b""
    deadline = time.monotonic() + 60
    sent = False
    while time.monotonic() < deadline:
        import select

        readable, _, _ = select.select([master], [], [], 0.1)
        if readable:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process has closed the terminal
                break
            output += chunk
            if not sent and b"READY" in output:
                if before_typing is not None:
                    before_typing(process, slave_copy)
                os.write(master, typed)
                sent = True
        elif process.poll() is not None:
            break
    status = process.wait(timeout=30)
    os.close(master)
    os.close(slave_copy)
    return status, output


def test_run_t_gives_the_app_a_terminal_of_the_pods_own(sdrun: Sdrun, rootfs: Path) -> None:
    from tests.conftest import SDRUN

    script = "echo READY; read line; echo got:$line; tty; stty size; [ -t 0 ] && [ -t 1 ] && exit 5"
    argv = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "-it", "--rootfs", str(rootfs), "--", "sh", "-c", script]
    status, output = run_on_a_terminal(argv, b"hello\r")
    text = output.decode(errors="replace")
    assert status == 5, text
    assert "got:hello" in text
    assert "\n/dev/pts/0\r\n" in text  # the container's devpts: the first terminal of its own instance
    assert "33 77" in text
    assert sdrun.pods() == []


def test_run_i_on_a_terminal_relays_its_lines_not_the_terminal_itself(sdrun: Sdrun, rootfs: Path) -> None:
    from tests.conftest import SDRUN

    script = "echo READY; read line; echo got:$line; cat; [ -t 0 ] || echo not-a-tty; exit 6"
    argv = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "-i", "--rootfs", str(rootfs), "--", "sh", "-c", script]
    status, output = run_on_a_terminal(argv, b"hello\r\x04")  # a line, then ^D: the end of input
    text = output.decode(errors="replace")
    assert status == 6, text
    assert "got:hello" in text and "not-a-tty" in text


def test_run_t_follows_the_window_size_and_no_resize_stops_the_app(sdrun: Sdrun, rootfs: Path) -> None:
    """SIGWINCH reaches `run` through the same wakeup fd as the signals it forwards: resizes are
    no signals to pass on, and a second one is no second ^C that stops the unit."""
    import fcntl
    import signal
    import struct
    import termios

    from tests.conftest import SDRUN

    def resize_twice(process: subprocess.Popen[bytes], terminal: int) -> None:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 99, 0, 0))
        for _ in range(2):
            process.send_signal(signal.SIGWINCH)
            time.sleep(0.3)

    script = "echo READY; read line; stty size; exit 3"
    argv = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "-it", "--rootfs", str(rootfs), "--", "sh", "-c", script]
    status, output = run_on_a_terminal(argv, b"go\r", before_typing=resize_twice)
    assert status == 3 and b"44 99" in output, output


def test_run_t_leaves_the_unit_to_the_app(sdrun: Sdrun, rootfs: Path) -> None:
    """The stage1 entry still exits: the relay is the CLI's, not a process in the unit."""
    from tests.conftest import SDRUN

    name = unique_name("alone")
    seen: list[list[str]] = []

    def unit_processes(_process: subprocess.Popen[bytes], _terminal: int) -> None:
        main_pid = systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"]
        cgroup = next(
            line.split(":", 2)[2]
            for line in Path(f"/proc/{main_pid}/cgroup").read_text().splitlines()
            if line.split(":")[1] == "name=systemd"
        )
        procs = Path(f"/sys/fs/cgroup/systemd{cgroup}/cgroup.procs")
        # The entry leaves right after it let the app go: give it the moment test_core's check gives it.
        deadline = time.monotonic() + 2
        while procs.read_text().split() != [main_pid] and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(procs.read_text().split())
        seen.append([main_pid])

    script = "echo READY; read line; exit 0"
    argv = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "-it", "--name", name, "--rootfs", str(rootfs),
            "--", "sh", "-c", script]  # fmt: skip
    status, _ = run_on_a_terminal(argv, b"\r", before_typing=unit_processes)
    assert status == 0
    processes, main_pid = seen
    assert processes == main_pid


def test_run_t_turns_ctrl_c_into_sigint_for_the_app(sdrun: Sdrun, rootfs: Path) -> None:
    from tests.conftest import SDRUN

    script = "trap 'echo INTERRUPTED; exit 7' INT; echo READY; while :; do sleep 0.1; done"
    argv = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "-it", "--rootfs", str(rootfs), "--", "sh", "-c", script]
    status, output = run_on_a_terminal(argv, b"\x03")
    assert status == 7 and b"INTERRUPTED" in output, output


# --- --version, list -q, --filter, --format ---


def test_version_is_the_packages(sdrun: Sdrun) -> None:
    from importlib.metadata import version

    assert sdrun("--version").stdout == f"sdrun version {version('sdrun')}\n"


def test_list_quiet_filter_and_format(sdrun: Sdrun, rootfs: Path) -> None:
    web, db, done = unique_name("web"), unique_name("db"), unique_name("done")
    uuids = {}
    for name, label in ((web, "tier=front"), (db, "tier=back")):
        uuids[name] = sdrun("run", "-d", "--name", name, "--net", "none", "--label", label, "--rootfs", str(rootfs),
                            *COUNTING_APP).stdout.strip()  # fmt: skip
    sdrun("run", "--name", done, "--stage1", "fly", "--rootfs", str(rootfs), "--", "true")
    uuids[done] = str(pod_json(sdrun, done)["uuid"])

    def listed(*args: str) -> list[str]:
        return sdrun("list", *args).stdout.splitlines()

    assert sorted(listed("-q")) == sorted(uuids.values())
    assert listed("-q", "--filter", "state=running", "--filter", "label=tier=front") == [uuids[web]]
    assert sorted(listed("-q", "--filter", "status=running")) == sorted([uuids[web], uuids[db]])
    assert listed("-q", "--filter", "label=tier", "--filter", f"name=^{db}$") == [uuids[db]]
    assert sorted(listed("-q", "--filter", f"name={web}", "--filter", f"name={db}")) == sorted([uuids[web], uuids[db]])
    assert listed("-q", "--filter", "stage1=fly") == [uuids[done]]
    assert listed("-q", "--filter", f"id={uuids[done][:6]}") == [uuids[done]]
    assert listed("--filter", "state=exited", "--format", "{{.Name}} {{ .State }}\\t{{.exit_status}}") == [
        f"{done} exited\t0"
    ]
    assert listed("--filter", "state=exited", "--format", "{{.ID}}|{{.Names}}|{{.Command}}|{{.Labels}}") == [
        f"{uuids[done]}|{done}|true|"
    ]
    assert listed("--filter", "label=tier=back", "--format", "{{.Labels}}") == ["tier=back"]
    as_json = json.loads(sdrun("list", "--format", "json", "--filter", f"name={db}").stdout)
    assert [pod["uuid"] for pod in as_json] == [uuids[db]]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--filter", "colour=red"], "invalid --filter 'colour=red'"),
        (["--filter", "name"], "invalid --filter 'name'"),
        (["--filter", "name=("], "invalid --filter 'name=('"),
    ],
)
def test_bad_list_options(sdrun: Sdrun, args: list[str], fragment: str) -> None:
    result = sdrun("list", *args, check=False)
    assert result.returncode == 125 and fragment in result.stderr and result.stderr.count("\n") == 1


def test_a_format_naming_no_field_is_refused(sdrun: Sdrun, rootfs: Path) -> None:
    sdrun("run", "--name", unique_name(), "--stage1", "fly", "--rootfs", str(rootfs), "--", "true")
    result = sdrun("list", "--format", "{{.Colour}}", check=False)
    assert result.returncode == 125 and "--format: no field 'Colour'" in result.stderr


# --- health, restarts and OOM kills in list and status ---


def test_list_and_status_show_how_often_systemd_restarted_the_app(sdrun: Sdrun, rootfs: Path) -> None:
    state = sdrun.root / "state"
    state.mkdir()
    script = (
        "n=$(cat /state/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/n; [ $n -ge 3 ] || exit 1; sleep 1000"
    )
    name = unique_name("restarts")
    sdrun("run", "-d", "--name", name, "--stage1", "fly", "--restart", "on-failure",
          "-v", f"{state}:/state", "--rootfs", str(rootfs), "--", "sh", "-c", script)  # fmt: skip
    wait_for(lambda: pod_json(sdrun, name)["restarts"] == 2)
    assert pod_json(sdrun, name)["state"] == "running"
    (row,) = [line for line in sdrun("list").stdout.splitlines() if f" {name} " in line]
    assert " running (2 restarts) " in row
    assert "\nrestarts: 2\n" in sdrun("status", name).stdout
    assert "oom_killed" not in sdrun("status", name).stdout  # false: not shown
    sdrun("restart", name)  # a new unit counts from 0
    assert pod_json(sdrun, name)["restarts"] == 0


def test_list_and_status_show_the_last_health_check(sdrun: Sdrun, rootfs: Path, installed: list[str]) -> None:
    name = unique_name("healthy")
    health = ("--healthcheck", "true", "--healthcheck-interval", "1")
    sdrun("install", "--now", name, "--net", "none", *health, "--rootfs", str(rootfs), *COUNTING_APP)
    installed.append(name)
    wait_for(lambda: pod_json(sdrun, name)["health"] == "healthy")
    (row,) = [line for line in sdrun("list").stdout.splitlines() if f" {name} " in line]
    assert " running (healthy) " in row
    assert "\nhealth: healthy\n" in sdrun("status", name).stdout
    sdrun("stop", name)
    assert pod_json(sdrun, name)["health"] is None  # only a running pod has a health
    no_check = unique_name("plain")
    sdrun("run", "-d", "--name", no_check, "--net", "none", "--rootfs", str(rootfs), *COUNTING_APP)
    assert pod_json(sdrun, no_check)["health"] is None


# --- enter -u, -e, -w ---


@pytest.mark.parametrize("stage1", [("--stage1", "namespace", "--net", "none"), ("--stage1", "fly")], ids=["ns", "fly"])
def test_enter_as_another_user_with_variables_and_a_directory(
    sdrun: Sdrun, rootfs: Path, stage1: tuple[str, ...]
) -> None:
    name = unique_name("enter")
    sdrun("run", "-d", *stage1, "--name", name, "-e", "MODE=app", "--rootfs", str(rootfs), "--", "sleep", "1000")
    show = "id -u; id -g; echo $MODE $EXTRA $HOME; pwd"
    plain = sdrun("enter", name, "--", "sh", "-c", show).stdout.split("\n")
    assert plain[:2] == ["0", "0"] and plain[2].startswith("app")
    changed = sdrun("enter", "-u", "user", "-e", "EXTRA=1", "-w", "/tmp", name, "--", "sh", "-c", show)
    assert changed.stdout.split("\n")[:4] == ["1000", "1000", "app 1 /home/user", "/tmp"]
    numeric = sdrun("enter", "--user", "1234:5", "--env", "MODE=entered", name, "--", "sh", "-c", show)
    assert numeric.stdout.split("\n")[:3] == ["1234", "5", "entered /"]
    unknown = sdrun("enter", "-u", "nobody-here", name, "--", "true", check=False)
    assert unknown.returncode == 125 and "user 'nobody-here' not found in the container's /etc/passwd" in unknown.stderr
    relative = sdrun("enter", "-w", "tmp", name, "--", "true", check=False)
    assert relative.returncode == 125 and "absolute path" in relative.stderr
    missing = sdrun("enter", "-w", "/no/such/dir", name, "--", "true", check=False)
    assert missing.returncode != 0 and "/no/such/dir" in missing.stderr and missing.stderr.count("\n") == 1


# --- enter -t: a terminal of the pod's own devpts ---


def unit_processes(name: str) -> list[str]:
    group = systemctl_show(f"sdrun-{name}.service", "ControlGroup")["ControlGroup"]
    return Path("/sys/fs/cgroup/systemd", group.lstrip("/"), "cgroup.procs").read_text().split()


def enter_argv(sdrun: Sdrun, *args: str) -> list[str]:
    from tests.conftest import SDRUN

    return [SDRUN, "--root", str(sdrun.root), "enter", *args]


# What the entered shell says of its terminal: the name `tty` gives it must be a node of the pod's
# own /dev/pts (a pseudo-terminal of the host's has none there: "not a tty"), its user the
# command's, stdin, stdout and stderr that terminal, and no other descriptor inherited (ls's own
# 3 aside: no master, no socket of sdrun's).
SHOW_TERMINAL = (
    "echo READY; read line; echo got:$line; t=$(tty); echo name:$t; [ -c $t ] && echo in-the-pod; "
    "stty size; ls -ln $t | awk '{print \"owner:\" $3}'; "
    "for fd in 0 1 2; do echo fd:$(readlink /proc/$$/fd/$fd); done; "
    "echo fds:$(ls -1 /proc/self/fd | tr '\\n' ' '); "
    "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && exit 5"
)


@pytest.mark.parametrize("users", [(), ("--private-users",)], ids=["host-users", "private-users"])
def test_enter_on_a_terminal_gives_a_terminal_of_the_pods_own_devpts(
    sdrun: Sdrun, rootfs: Path, users: tuple[str, ...]
) -> None:
    import re

    name = unique_name("entert")
    sdrun("run", "-d", "--net", "none", *users, "--name", name, "--rootfs", str(rootfs), "--", "sleep", "1000")
    main_pid = systemctl_show(f"sdrun-{name}.service", "MainPID")["MainPID"]
    status, output = run_on_a_terminal(enter_argv(sdrun, name, "--", "sh", "-c", SHOW_TERMINAL), b"hello\r", 21, 61)
    text = output.decode(errors="replace")
    assert status == 5, text  # the command's status is enter's
    assert "got:hello" in text and "in-the-pod" in text and "21 61" in text, text
    (terminal,) = re.findall(r"name:(/dev/pts/\d+)\r\n", text)
    assert "owner:0\r\n" in text, text  # the pod's root's, under --private-users too
    assert re.findall(r"\bfd:(\S+)\r\n", text) == [terminal] * 3, text
    assert "fds:0 1 2 3\r\n" in text, text
    assert unit_processes(name) == [main_pid]  # nothing of enter's is left in the unit


def test_enter_t_as_another_user_with_no_terminal_of_ours(sdrun: Sdrun, rootfs: Path) -> None:
    """-t gives the command a terminal whatever our stdio is (here pipes); the relay copies its
    output (with the terminal's \\r\\n); without -t and no terminal of ours, none."""
    name = unique_name("entert")
    sdrun("run", "-d", "--net", "none", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "1000")
    script = "tty; ls -ln $(tty) | awk '{print $3}'; [ -t 0 ] && [ -t 1 ] && exit 4"
    quiet = subprocess.DEVNULL
    forced = sdrun("enter", "-t", "-u", "1000", name, "--", "sh", "-c", script, check=False, stdin=quiet)
    assert forced.returncode == 4, forced.stderr
    lines = forced.stdout.splitlines()  # text mode: the terminal's \r\n read as \n
    assert lines[0].startswith("/dev/pts/") and lines[1] == "1000", forced.stdout
    plain = sdrun("enter", name, "--", "sh", "-c", "tty; exit 3", check=False, stdin=quiet)
    assert (plain.returncode, plain.stdout) == (3, "not a tty\n")
    assert sdrun("enter", "-it", name, "--", "sh", "-c", "exit 6", check=False, stdin=quiet).returncode == 6


def test_enter_never_hands_the_pod_our_terminal_when_only_stdout_is_one(sdrun: Sdrun, rootfs: Path) -> None:
    """`sdrun enter POD CMD < file` on a terminal: stdout and stderr get the pod's terminal (ours
    would be the pod's to keep and read), stdin stays the file."""
    import os
    import pty

    name = unique_name("entert")
    sdrun("run", "-d", "--net", "none", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "1000")
    master, slave = pty.openpty()
    script = "tty <&1; [ -t 0 ] || echo stdin-kept; exit 3"
    entered = subprocess.Popen(
        enter_argv(sdrun, name, "--", "sh", "-c", script), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
    )
    os.close(slave)
    output = b""
    try:
        while chunk := os.read(master, 4096):
            output += chunk
    except OSError:  # EIO once sdrun, the last holder of the slave, has exited
        pass
    os.close(master)
    assert entered.wait(timeout=60) == 3
    text = output.decode(errors="replace")
    assert text.startswith("/dev/pts/") and "stdin-kept" in text, text


def test_enter_on_a_terminal_of_a_fly_pod_gets_one_of_the_hosts(sdrun: Sdrun, rootfs: Path) -> None:
    """fly shares the host's /dev: the pseudo-terminal stage0 makes on the host is one it can name."""
    name = unique_name("entert")
    sdrun("run", "-d", "--stage1", "fly", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "1000")
    script = "echo READY; read line; echo got:$line; stty size; [ -t 0 ] && [ -t 1 ] && exit 5"
    status, output = run_on_a_terminal(enter_argv(sdrun, name, "--", "sh", "-c", script), b"fly\r", 22, 66)
    assert status == 5 and b"got:fly" in output and b"22 66" in output, output


def test_enter_without_a_terminal_leaves_the_command_no_controlling_terminal_of_ours(
    sdrun: Sdrun, rootfs: Path
) -> None:
    """Our stdio redirected, our terminal is still our session's: the command runs in a session of
    its own, so that /dev/tty (which the pod's DevicePolicy allows) cannot reach ours."""
    import fcntl
    import os
    import pty
    import termios

    name = unique_name("entert")
    sdrun("run", "-d", "--net", "none", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "1000")
    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)

    def take_controlling_terminal() -> None:  # after start_new_session's setsid
        fd = os.open(slave_name, os.O_RDWR)
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        os.close(fd)

    script = "if echo probe 2>/dev/null > /dev/tty; then echo opened; else echo refused; fi"
    entered = subprocess.run(
        enter_argv(sdrun, name, "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
        preexec_fn=take_controlling_terminal,
        timeout=60,
        check=False,
    )
    os.close(slave)
    os.set_blocking(master, False)
    try:
        seen = os.read(master, 4096)
    except OSError:  # EIO once every holder of the slave closed it, with nothing written
        seen = b""
    os.close(master)
    assert (entered.returncode, entered.stdout, seen) == (0, b"refused\n", b""), entered.stderr


def test_ctrl_c_reaches_a_command_entered_without_a_terminal(sdrun: Sdrun, rootfs: Path) -> None:
    """^C at our terminal signals our process group: enter passes SIGINT on to the command, which is
    in a session of its own, and exits with the command's status."""
    import os
    import signal

    name = unique_name("entert")
    sdrun("run", "-d", "--net", "none", "--name", name, "--rootfs", str(rootfs), "--", "sleep", "1000")
    script = "trap 'echo interrupted; exit 7' INT; echo up; while :; do sleep 0.1; done"
    entered = subprocess.Popen(
        enter_argv(sdrun, name, "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
        # As a shell at a terminal starts it: ^C not ignored (a background job of ours may have it so).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads here
    )
    assert entered.stdout is not None and entered.stdout.readline() == b"up\n"
    os.killpg(entered.pid, signal.SIGINT)
    assert entered.wait(timeout=60) == 7
    assert entered.stdout.read() == b"interrupted\n"
