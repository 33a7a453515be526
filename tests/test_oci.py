"""sdrun-oci, the OCI runtime: driven by the real podman 4.3 (with --runtime), and directly with bundles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, STATE_BASE, VENV_BIN, needs_systemd, wait_for

pytestmark = needs_systemd

DEFAULT_ROOT = Path("/run/sdrun-oci")
PODMAN_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]


def runtime_path() -> Path:
    """The console script; made here if the editable install predates it (pyproject's sdrun-oci)."""
    installed = VENV_BIN / "sdrun-oci"
    if installed.exists():
        return installed
    script = PROJECT / "build" / "sdrun-oci"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{VENV_BIN / 'python'}\nfrom sdrun.oci.cli import entry_point\nentry_point()\n")
    script.chmod(0o755)
    return script


RUNTIME = runtime_path()


def oci_scopes() -> set[str]:
    """The scopes sdrun-oci made: sdrun-oci-ID.scope, or libpod-ID.scope under podman."""
    listing = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--type=scope", "sdrun-oci-*", "libpod-*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip() and "conmon" not in line.split()[0]}


def containers_in(root: Path) -> list[str]:
    """The containers' directories under an sdrun-oci --root (not its .seccomp cache)."""
    return sorted(entry.name for entry in root.iterdir() if not entry.name.startswith(".")) if root.exists() else []


# --- podman ---


class Podman:
    def __init__(self, storage: Path, conf: Path) -> None:
        self.storage = storage
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "HOME": str(storage)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [
            "podman",
            "--root",
            str(self.storage / "root"),
            "--runroot",
            str(self.storage / "run"),
            "--storage-driver",
            "vfs",
            "--runtime",
            str(RUNTIME),
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result


@pytest.fixture(scope="module")
def podman(rootfs: Path) -> Iterator[Podman]:
    """podman with its storage on the harness's /var/tmp (tmpfs: vfs works there), sdrun-oci as its
    runtime (listed in runtime_supports_json, so that podman passes --log-format=json), and the
    busybox rootfs imported as localhost/busybox."""
    storage = Path("/var/tmp") / f"podman-{uuid.uuid4().hex[:8]}"
    storage.mkdir(parents=True)
    conf = storage / "containers.conf"
    conf.write_text(f'[engine]\nruntime_supports_json = ["{RUNTIME.name}"]\n')
    runner = Podman(storage, conf)
    archive = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    store = ["--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    subprocess.run(
        ["podman", *store, "import", "-", "localhost/busybox"],
        input=archive,
        capture_output=True,
        check=True,
        env=runner.env,
    )
    yield runner
    runner("rm", "-af", "-t", "0", check=False)
    shutil.rmtree(storage, ignore_errors=True)


def test_podman_run_rm_exits_with_the_apps_status_and_leaves_nothing(podman: Podman) -> None:
    before = oci_scopes()
    result = podman("run", "--rm", "localhost/busybox", "sh", "-c", "echo out; exit 5", check=False)
    assert result.returncode == 5, result.stderr
    assert result.stdout == "out\n"
    assert oci_scopes() - before == set()
    assert not DEFAULT_ROOT.exists() or containers_in(DEFAULT_ROOT) == []


def test_podman_container_is_confined_as_its_config_says(podman: Podman) -> None:
    script = "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; hostname; touch /proc/sys/x || echo ro"
    result = podman("run", "--rm", "--hostname", "box", "localhost/busybox", "sh", "-c", script)
    status = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    assert status["CapEff"] == status["CapBnd"]
    assert not int(status["CapBnd"], 16) & (1 << 21)  # no SYS_ADMIN in podman's default set
    assert status["CapInh"] == "0000000000000000"  # podman's config.json asks for none
    assert status["Seccomp"] == "2"  # podman's default profile, compiled
    assert status["NoNewPrivs"] == "1"
    assert "box" in result.stdout.splitlines()
    assert "ro" in result.stdout.splitlines()


def test_podman_run_detached_ps_stop_rm(podman: Podman) -> None:
    name = f"d{uuid.uuid4().hex[:8]}"
    container = podman("run", "-d", "--name", name, "localhost/busybox", "sleep", "1000").stdout.strip()
    try:
        listed = podman("ps", "--format", "{{.Names}} {{.Status}}").stdout
        assert f"{name} Up" in listed
        scope = f"libpod-{container}.scope"
        shown = subprocess.run(
            ["systemctl", "show", scope, "-p", "ActiveState", "-p", "Delegate", "-p", "Slice", "-p", "TasksMax"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "ActiveState=active" in shown
        assert "Delegate=yes" in shown
        assert "Slice=machine.slice" in shown
        assert "TasksMax=2048" in shown  # podman's pids limit
        machines = subprocess.run(["machinectl", "list", "--no-legend"], capture_output=True, text=True, check=True)
        assert container in machines.stdout
        assert (
            json.loads(subprocess.run([str(RUNTIME), "state", container], capture_output=True, check=True).stdout)[
                "status"
            ]
            == "running"
        )
        podman("stop", "-t", "1", name)
        assert podman("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "exited"
        podman("rm", name)
        wait_for(lambda: scope not in oci_scopes())
        assert not (DEFAULT_ROOT / container).exists()
        machines = subprocess.run(["machinectl", "list", "--no-legend"], capture_output=True, text=True, check=True)
        assert container not in machines.stdout
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_podman_kill_reaches_the_app(podman: Podman) -> None:
    name = f"k{uuid.uuid4().hex[:8]}"
    script = "trap 'exit 42' USR1; echo waiting; while :; do sleep 0.1; done"
    podman("run", "-d", "--name", name, "localhost/busybox", "sh", "-c", script)
    try:
        wait_for(lambda: podman("logs", name).stdout == "waiting\n")  # conmon's log of the container's stdout
        podman("kill", "-s", "USR1", name)
        assert podman("wait", name).stdout.strip() == "42"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_podman_exec_joins_the_container_confined(podman: Podman) -> None:
    name = f"e{uuid.uuid4().hex[:8]}"
    container = podman("run", "-d", "--name", name, "localhost/busybox", "sleep", "1000").stdout.strip()
    try:
        result = podman(
            "exec", name, "sh", "-c", "hostname; grep -E '^(CapInh|Seccomp):' /proc/self/status; exit 3", check=False
        )
        assert result.returncode == 3, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == container[:12]  # the container's UTS namespace
        assert "CapInh:\t0000000000000000" in lines
        assert "Seccomp:\t2" in lines
        procs = podman("exec", name, "ps", "-o", "pid,comm").stdout
        assert "sleep" in procs  # its PID namespace
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_podman_run_tty_gets_a_terminal_over_the_console_socket(podman: Podman) -> None:
    result = podman("run", "--rm", "-t", "localhost/busybox", "sh", "-c", "tty; exit 3", check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "/dev/pts/0"


def test_podman_exec_tty(podman: Podman) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "localhost/busybox", "sleep", "1000")
    try:
        result = podman("exec", "-t", name, "tty")
        assert result.stdout.strip().startswith("/dev/pts/")
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_podman_pod_containers_share_the_network_namespace(podman: Podman) -> None:
    """A pod's containers join its infra container's namespaces by path (linux.namespaces[].path)."""
    pod = f"p{uuid.uuid4().hex[:8]}"
    podman("pod", "create", "--name", pod, "--infra-image", "localhost/busybox", "--infra-command", "sleep 100000")
    try:
        podman("run", "-d", "--pod", pod, "localhost/busybox", "sh", "-c", "echo from-server | nc -l -p 8080")
        client = podman("run", "--rm", "--pod", pod, "localhost/busybox", "sh", "-c", "sleep 0.5; nc 127.0.0.1 8080")
        assert client.stdout.strip() == "from-server"
    finally:
        podman("pod", "rm", "-f", "-t", "0", pod, check=False)


def test_podman_update_memory_sets_the_scopes_limit(podman: Podman) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    container = podman("run", "-d", "--name", name, "localhost/busybox", "sleep", "1000").stdout.strip()
    try:
        podman("update", "--memory", "64m", name)
        shown = subprocess.run(
            ["systemctl", "show", f"libpod-{container}.scope", "-p", "MemoryMax"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout.strip() == f"MemoryMax={64 * 1024 * 1024}"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_podman_pause_freezes_the_container_until_unpause(podman: Podman) -> None:
    name = f"z{uuid.uuid4().hex[:8]}"
    script = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"
    podman("run", "-d", "--name", name, "localhost/busybox", "sh", "-c", script)
    try:
        wait_for(lambda: len(podman("logs", name).stdout.split()) > 2)
        podman("pause", name)
        assert podman("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "paused"
        frozen = podman("logs", name).stdout
        time.sleep(0.5)
        assert podman("logs", name).stdout == frozen  # not one line more while frozen
        podman("unpause", name)
        assert podman("inspect", "-f", "{{.State.Status}}", name).stdout.strip() == "running"
        wait_for(lambda: len(podman("logs", name).stdout) > len(frozen))
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


# --- bundles, directly ---


def bundle_config(rootfs: Path, args: list[str], **changes: Any) -> dict[str, Any]:
    """A config.json as podman writes it (its mounts, capabilities, namespaces), for rootfs."""
    config: dict[str, Any] = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "umask": 0o22},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {name: PODMAN_CAPABILITIES for name in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 1000}],
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bundle",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            },
        },
    }
    config.update(changes)
    return config


class Bundle:
    def __init__(self, directory: Path, root: Path) -> None:
        self.directory = directory
        self.root = root  # sdrun-oci's --root
        self.output = directory / "output"

    def write(self, config: dict[str, Any]) -> None:
        (self.directory / "config.json").write_text(json.dumps(config))

    def oci(self, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        """sdrun-oci VERB...: its stdout and stderr into files, which the container inherits from create
        (a pipe would stay open as long as the container lives); stderr comes back in the result."""
        logging = ["--log", str(log), "--log-format", "json"] if log else []
        errors = self.directory / "stderr"
        with self.output.open("a") as sink, errors.open("w") as error_sink:
            result = subprocess.run(
                [str(RUNTIME), "--root", str(self.root), *logging, *args],
                stdout=sink,
                stderr=error_sink,
                text=True,
                timeout=60,
                check=False,
            )
        result.stderr = errors.read_text()
        return result

    def state(self, container_id: str) -> dict[str, Any]:
        result = subprocess.run(
            [str(RUNTIME), "--root", str(self.root), "state", container_id], capture_output=True, text=True, check=True
        )
        state: dict[str, Any] = json.loads(result.stdout)
        return state


@pytest.fixture
def bundle(private_rootfs: Path) -> Iterator[Bundle]:
    directory = STATE_BASE / f"bundle-{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    made = Bundle(directory, directory / "state")
    made.write(bundle_config(private_rootfs, ["true"]))
    yield made
    for container in containers_in(made.root):
        made.oci("delete", "--force", container)
    shutil.rmtree(directory, ignore_errors=True)


def test_create_start_state_delete(bundle: Bundle, private_rootfs: Path) -> None:
    script = "hostname; ulimit -n; mkdir /tmp/d 2>/dev/null || echo no-mkdir; touch /x 2>/dev/null || echo ro-root"
    bundle.write(bundle_config(private_rootfs, ["sh", "-c", script]))
    # Twice: the second create takes the seccomp program from the cache the first one compiled it into.
    for round_ in ("compiled", "cached"):
        bundle.output.write_text("")
        name = f"c{uuid.uuid4().hex[:8]}"
        pid_file = bundle.directory / "pid"
        created = bundle.oci("create", "--bundle", str(bundle.directory), "--pid-file", str(pid_file), name)
        assert created.returncode == 0, created.stderr
        assert len(list((bundle.root / ".seccomp").iterdir())) == 1, round_
        state = bundle.state(name)
        assert state["status"] == "created"
        assert state["pid"] == int(pid_file.read_text())
        assert state["bundle"] == str(bundle.directory)
        assert f"sdrun-oci-{name}.scope" in oci_scopes()
        assert bundle.output.read_text() == ""  # held before the app until start
        assert bundle.oci("start", name).returncode == 0
        wait_for(lambda name=name: bundle.state(name)["status"] == "stopped")
        # The hostname, the rlimit, the seccomp rule (mkdir refused) and the read-only root were honoured.
        assert bundle.output.read_text().split() == ["bundle", "1000", "no-mkdir", "ro-root"], round_
        deleted = bundle.oci("delete", name)
        assert deleted.returncode == 0, deleted.stderr
        assert not (bundle.root / name).exists()
        wait_for(lambda name=name: f"sdrun-oci-{name}.scope" not in oci_scopes())
        gone = bundle.oci("state", name)
        assert gone.returncode != 0
        assert "does not exist" in gone.stderr


@pytest.mark.parametrize("signal_text", ["TERM", "SIGTERM", "15"])
def test_kill_by_name_or_number(bundle: Bundle, private_rootfs: Path, signal_text: str) -> None:
    bundle.write(bundle_config(private_rootfs, ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done"]))
    name = f"k{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    assert bundle.oci("start", name).returncode == 0
    assert bundle.state(name)["status"] == "running"
    refused = bundle.oci("delete", name)
    assert refused.returncode != 0
    assert "not stopped" in refused.stderr
    assert bundle.oci("kill", name, signal_text).returncode == 0
    wait_for(lambda: bundle.state(name)["status"] == "stopped")
    assert bundle.oci("delete", name).returncode == 0


def test_delete_force_kills_a_created_container(bundle: Bundle, private_rootfs: Path) -> None:
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    name = f"f{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    pid = bundle.state(name)["pid"]
    assert bundle.oci("kill", "--all", name, "KILL").returncode == 0
    wait_for(lambda: bundle.state(name)["status"] == "stopped")
    assert not Path(f"/proc/{pid}/cmdline").exists() or Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    assert bundle.oci("delete", "--force", name).returncode == 0
    assert not (bundle.root / name).exists()
    wait_for(lambda: f"sdrun-oci-{name}.scope" not in oci_scopes())


def assert_refused_leaving_nothing(bundle: Bundle, name: str, args: list[str], expected: str) -> None:
    log = bundle.directory / "log.json"
    before = oci_scopes()
    result = bundle.oci(*args, name, log=log)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert expected in result.stderr
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error"
    assert expected in last["msg"]
    assert not (bundle.root / name).exists()
    assert oci_scopes() - before == set()


def test_bundle_not_a_directory_is_refused(bundle: Bundle) -> None:
    missing = str(bundle.directory / "nothing")
    assert_refused_leaving_nothing(bundle, "b1", ["create", "--bundle", missing], "is not a directory")


def test_malformed_config_is_refused(bundle: Bundle) -> None:
    (bundle.directory / "config.json").write_text("{not json")
    assert_refused_leaving_nothing(bundle, "b2", ["create", "--bundle", str(bundle.directory)], "not valid JSON")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}}, "user namespace"),
        ({"linux": {"namespaces": [{"type": "mount"}], "intelRdt": {"closID": "x"}}}, "linux.intelRdt"),
        ({"hooks": {"createContainer": [{"path": "/bin/true"}]}}, "hooks.createContainer"),
    ],
)
def test_unsupported_security_fields_are_refused(
    bundle: Bundle, private_rootfs: Path, change: dict[str, Any], expected: str
) -> None:
    bundle.write(bundle_config(private_rootfs, ["true"], **change))
    assert_refused_leaving_nothing(bundle, "b3", ["create", "--bundle", str(bundle.directory)], expected)


def test_setup_failure_leaves_nothing(bundle: Bundle, private_rootfs: Path) -> None:
    """A failure inside the container's set-up (a bind of a source that is not there) comes back as one line."""
    config = bundle_config(private_rootfs, ["true"])
    config["mounts"].append({"destination": "/mnt", "type": "bind", "source": "/nonexistent", "options": ["rbind"]})
    bundle.write(config)
    assert_refused_leaving_nothing(bundle, "b4", ["create", "--bundle", str(bundle.directory)], "nonexistent")


def test_failure_after_the_init_started_leaves_nothing(bundle: Bundle, private_rootfs: Path) -> None:
    """A pid file that cannot be written: create fails once its init is held at the fifo, which must not stay."""
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    pid_file = str(bundle.directory / "missing" / "pid")
    args = ["create", "--bundle", str(bundle.directory), "--pid-file", pid_file]
    assert_refused_leaving_nothing(bundle, "b5", args, "No such file")


def test_dead_console_socket_is_refused(bundle: Bundle, private_rootfs: Path) -> None:
    config = bundle_config(private_rootfs, ["true"])
    config["process"]["terminal"] = True
    bundle.write(config)
    socket_path = str(bundle.directory / "no-such-socket")
    args = ["create", "--bundle", str(bundle.directory), "--console-socket", socket_path]
    assert_refused_leaving_nothing(bundle, "b6", args, "console socket")


# fd N (argv[1]) as fd 3 too, then exec the rest: as conmon passes --preserve-fds (dash takes fds up to 9 only).
DUP_TO_3_AND_EXEC = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.argv[2], sys.argv[2:])"


def test_preserved_fds_reach_the_app(bundle: Bundle, private_rootfs: Path) -> None:
    """fds 3..3+N-1 reach the app; any other fd that create inherited does not (here the pipe's own fd)."""
    name = f"q{uuid.uuid4().hex[:8]}"
    read_end, write_end = os.pipe()
    script = f"echo through-fd-3 >&3; [ -e /proc/self/fd/{write_end} ] && echo leaked; true"
    bundle.write(bundle_config(private_rootfs, ["sh", "-c", script]))
    command = [str(RUNTIME), "--root", str(bundle.root), "create", "--bundle", str(bundle.directory)]
    with bundle.output.open("a") as sink:  # the container inherits create's stdio: not a pipe of ours
        created = subprocess.run(
            [sys.executable, "-c", DUP_TO_3_AND_EXEC, str(write_end), *command, "--preserve-fds", "1", name],
            pass_fds=(write_end,),
            stdout=sink,
            stderr=sink,
            timeout=60,
            check=False,
        )
    os.close(write_end)
    try:
        assert created.returncode == 0, bundle.output.read_text()
        assert bundle.oci("start", name).returncode == 0
        with os.fdopen(read_end) as stream:
            assert stream.read() == "through-fd-3\n"  # EOF: the app, the last holder, has exited
        assert "leaked" not in bundle.output.read_text()
    finally:
        bundle.oci("delete", "--force", name)


def test_id_in_use_is_refused_and_the_first_container_is_kept(bundle: Bundle, private_rootfs: Path) -> None:
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    name = f"u{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    again = bundle.oci("create", "--bundle", str(bundle.directory), name)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert bundle.state(name)["status"] == "created"
    assert bundle.oci("delete", "--force", name).returncode == 0
    assert not (bundle.root / name).exists()


def test_version_and_features() -> None:
    version = subprocess.run([str(RUNTIME), "--version"], capture_output=True, text=True, check=True).stdout
    lines = version.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("sdrun-oci version ")
    assert lines[1].startswith("commit: ")
    assert lines[2].startswith("spec: 1.0")
    features = json.loads(subprocess.run([str(RUNTIME), "features"], capture_output=True, check=True).stdout)
    assert "mount" in features["linux"]["namespaces"]
    assert features["linux"]["cgroup"]["systemd"] is True


def test_exec_runs_a_process_json_in_the_container(bundle: Bundle, private_rootfs: Path) -> None:
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    name = f"x{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    assert bundle.oci("start", name).returncode == 0
    process = bundle_config(private_rootfs, ["sh", "-c", "hostname; mkdir /tmp/e || echo no-mkdir; exit 4"])["process"]
    (bundle.directory / "process.json").write_text(json.dumps(process))
    executed = bundle.oci("exec", "--process", str(bundle.directory / "process.json"), name)
    assert executed.returncode == 4, executed.stderr
    assert bundle.output.read_text().split() == ["bundle", "no-mkdir"]  # its hostname, its seccomp filter
    pid_file = bundle.directory / "exec.pid"
    process["args"] = ["sleep", "1000"]
    (bundle.directory / "process.json").write_text(json.dumps(process))
    detached = bundle.oci(
        "exec", "--detach", "--pid-file", str(pid_file), "--process", str(bundle.directory / "process.json"), name
    )
    assert detached.returncode == 0, detached.stderr
    scope_cgroup = Path(f"/proc/{bundle.state(name)['pid']}/cgroup").read_text()
    assert Path(f"/proc/{int(pid_file.read_text())}/cgroup").read_text() == scope_cgroup
    assert bundle.oci("delete", "--force", name).returncode == 0
    wait_for(lambda: f"sdrun-oci-{name}.scope" not in oci_scopes())


def test_ps_lists_the_scopes_processes(bundle: Bundle, private_rootfs: Path) -> None:
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    name = f"p{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    listing = subprocess.run(
        [str(RUNTIME), "--root", str(bundle.root), "ps", "--format", "json", name], capture_output=True, check=True
    )
    assert json.loads(listing.stdout) == [bundle.state(name)["pid"]]
    resources = bundle.directory / "resources.json"
    resources.write_text(json.dumps({"pids": {"limit": 77}}))
    assert bundle.oci("update", "--resources", str(resources), name).returncode == 0
    shown = subprocess.run(
        ["systemctl", "show", f"sdrun-oci-{name}.scope", "-p", "TasksMax"], capture_output=True, check=True
    )
    assert shown.stdout.decode().strip() == "TasksMax=77"
    resources.write_text(json.dumps({"cpu": {"shares": 5}}))
    refused = bundle.oci("update", "--resources", str(resources), name)
    assert refused.returncode != 0
    assert "resources.cpu" in refused.stderr
    assert bundle.oci("delete", "--force", name).returncode == 0


def test_a_scope_of_that_name_in_another_root_is_left_alone(bundle: Bundle, private_rootfs: Path) -> None:
    """The same ID under two --roots names one scope: the second create fails and must not stop the first's."""
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    name = f"s{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    other = Bundle(bundle.directory, bundle.directory / "other-root")
    again = other.oci("create", "--bundle", str(bundle.directory), name)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert not (other.root / name).exists()
    assert f"sdrun-oci-{name}.scope" in oci_scopes()
    assert bundle.state(name)["status"] == "created"
    assert bundle.oci("delete", "--force", name).returncode == 0


def test_pause_and_resume(bundle: Bundle, private_rootfs: Path) -> None:
    bundle.write(bundle_config(private_rootfs, ["sleep", "1000"]))
    name = f"r{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    refused = bundle.oci("pause", name)
    assert refused.returncode != 0
    assert "created" in refused.stderr
    assert bundle.oci("start", name).returncode == 0
    assert bundle.oci("pause", name).returncode == 0
    assert bundle.state(name)["status"] == "paused"
    pid = bundle.state(name)["pid"]
    assert "frozen 1" in (Path(state_freezer(pid)).parent / "cgroup.events").read_text()
    assert bundle.oci("resume", name).returncode == 0
    assert bundle.state(name)["status"] == "running"
    assert bundle.oci("pause", name).returncode == 0
    assert bundle.oci("delete", "--force", name).returncode == 0  # a paused container is killed too
    wait_for(lambda: f"sdrun-oci-{name}.scope" not in oci_scopes())


def state_freezer(pid: int) -> str:
    (path,) = [line[3:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::")]
    base = "/sys/fs/cgroup/unified" if Path("/sys/fs/cgroup/unified").is_dir() else "/sys/fs/cgroup"
    return f"{base}{path}/cgroup.freeze"


def hook(command: str) -> dict[str, Any]:
    return {"path": "/bin/sh", "args": ["sh", "-c", command], "env": ["PATH=/usr/bin:/bin"], "timeout": 10}


def test_hooks_run_with_the_state_on_stdin(bundle: Bundle, private_rootfs: Path) -> None:
    seen = bundle.directory / "hooks"
    seen.mkdir()
    hooks = {point: [hook(f"cat > {seen}/{point}")] for point in ("prestart", "createRuntime", "poststart", "poststop")}
    bundle.write(bundle_config(private_rootfs, ["true"], hooks=hooks))
    name = f"h{uuid.uuid4().hex[:8]}"
    assert bundle.oci("create", "--bundle", str(bundle.directory), name).returncode == 0
    pid = bundle.state(name)["pid"]
    for point in ("prestart", "createRuntime"):
        document = json.loads((seen / point).read_text())
        assert (document["id"], document["status"], document["pid"]) == (name, "creating", pid)
        assert document["bundle"] == str(bundle.directory)
    assert not (seen / "poststart").exists()
    assert bundle.oci("start", name).returncode == 0
    assert json.loads((seen / "poststart").read_text())["status"] == "running"
    wait_for(lambda: bundle.state(name)["status"] == "stopped")
    assert bundle.oci("delete", name).returncode == 0
    assert json.loads((seen / "poststop").read_text())["status"] == "stopped"


def test_a_failing_prestart_hook_fails_create_leaving_nothing(bundle: Bundle, private_rootfs: Path) -> None:
    bundle.write(bundle_config(private_rootfs, ["true"], hooks={"prestart": [hook("echo no network >&2; exit 3")]}))
    args = ["create", "--bundle", str(bundle.directory)]
    assert_refused_leaving_nothing(bundle, "b7", args, "prestart hook /bin/sh exited 3: no network")
