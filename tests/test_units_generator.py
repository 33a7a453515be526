"""Spec files in /etc/sdrun turned into units by the real generator (units/sdrun-generator), which
the harness's systemd runs at each daemon-reload: dependencies, restarts, readiness, socket
activation and machined, as a host with `make install` has them. /etc and /var/lib/sdrun are the
throwaway systemd's own (an overlay and a tmpfs): nothing here reaches the host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sdrun.units import installed_pod_uuid
from tests.conftest import PROJECT, SDRUN, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd
SPEC_DIR = Path("/etc/sdrun")
GENERATOR = Path("/etc/systemd/system-generators/sdrun-generator")
STATE = Path("/var/lib/sdrun")  # the generator's units use the default root
HOST_PYTHON = "/usr/bin/python3"
# The busybox rootfs has no python: the notify and socket apps run the host's, from its /usr.
HOST_USR = 'volume = ["/usr:/usr:ro", "/lib64:/lib64:ro", "/lib:/lib:ro"]\n'


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


def show(unit: str, *properties: str) -> dict[str, str]:
    return systemctl_show(unit, *properties)


def machines() -> dict[str, str]:
    """machinectl list: machine name -> its ADDRESSES column."""
    output = subprocess.run(["machinectl", "list", "--no-legend"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: line.split()[-1] for line in output.splitlines() if line.strip()}


def machine_property(name: str, prop: str) -> str:
    result = subprocess.run(
        ["machinectl", "show", name, f"--property={prop}", "--value"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def toml_list(items: list[str]) -> str:
    return json.dumps(items)  # a JSON array of strings is a TOML one


@dataclass
class Specs:
    """Spec files this test wrote in /etc/sdrun; their units are stopped and removed afterwards."""

    names: list[str] = field(default_factory=list)

    def write(self, name: str, text: str) -> str:
        (SPEC_DIR / f"{name}.toml").write_text(text)
        self.names.append(name)
        return f"sdrun-{name}.service"

    def reload(self) -> None:
        result = systemctl("daemon-reload")
        assert result.returncode == 0, result.stderr

    def start(self, unit: str) -> None:
        result = systemctl("start", unit)
        assert result.returncode == 0, result.stderr + journal_tail()

    def sdrun(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SDRUN, "--root", str(STATE), *args], capture_output=True, text=True, check=True)


def journal_tail() -> str:
    return subprocess.run(["journalctl", "-n", "40", "--no-pager"], capture_output=True, text=True, check=False).stdout


@pytest.fixture
def specs() -> Iterator[Specs]:
    """The generator installed as tools/install.sh installs it (this virtualenv's interpreter on its
    first line), and a Specs to write spec files with."""
    SPEC_DIR.mkdir(exist_ok=True)
    GENERATOR.parent.mkdir(parents=True, exist_ok=True)
    source = (PROJECT / "units" / "sdrun-generator").read_text().split("\n", 1)[1]
    GENERATOR.write_text(f"#!{sys.executable}\n{source}")
    GENERATOR.chmod(0o755)
    written = Specs()
    yield written
    names = written.names
    units = [unit for name in names for unit in (f"sdrun-{name}.socket", f"sdrun-health@{name}.timer")]
    systemctl("stop", *units, *(f"sdrun-{name}.service" for name in names))
    for name in names:
        (SPEC_DIR / f"{name}.toml").unlink(missing_ok=True)
        shutil.rmtree(STATE / "pods" / installed_pod_uuid(name), ignore_errors=True)
        (STATE / "names" / name).unlink(missing_ok=True)
    GENERATOR.unlink()
    systemctl("daemon-reload")
    systemctl("reset-failed")
    for name in names:
        assert show(f"sdrun-{name}.service", "LoadState")["LoadState"] == "not-found"


def test_db_starts_before_api_restarts_when_killed_and_both_are_machines(specs: Specs, rootfs: Path) -> None:
    db, api = unique_name("db"), unique_name("api")

    def app(name: str) -> str:
        return f'rootfs = "{rootfs}"\nexec = ["sh", "-c", "echo {name} up; exec sleep 1000"]\nnet = "none"\n'

    db_unit = specs.write(db, f'{app(db)}restart = "always"\nrestart_sec = 0.1\n')
    api_unit = specs.write(api, f'{app(api)}requires = ["{db}"]\n')
    specs.reload()
    assert show(db_unit, "ActiveState")["ActiveState"] == "inactive"
    assert f"sdrun-{db}.service" in show(api_unit, "Requires")["Requires"].split()

    specs.start(api_unit)  # db only by the dependency
    timing = ("ActiveState", "MainPID", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    db_state, api_state = show(db_unit, *timing, "InvocationID"), show(api_unit, *timing)
    assert db_state["ActiveState"] == api_state["ActiveState"] == "active"
    db_ready, api_exec = (
        int(db_state["ActiveEnterTimestampMonotonic"]),
        int(api_state["ExecMainStartTimestampMonotonic"]),
    )
    assert 0 < db_ready <= api_exec  # db was active before api's app was started
    wait_for(lambda: {db, api} <= machines().keys())
    assert machine_property(db, "Leader") == db_state["MainPID"]
    assert machine_property(db, "Unit") == db_unit

    os.kill(int(db_state["MainPID"]), signal.SIGKILL)
    restarted = ("NRestarts", "SubState", "MainPID", "InvocationID")
    wait_for(lambda: show(db_unit, *restarted)["NRestarts"] == "1", timeout=30)
    wait_for(lambda: show(db_unit, "SubState")["SubState"] == "running", timeout=30)
    after = show(db_unit, *restarted)
    assert after["MainPID"] not in ("0", db_state["MainPID"]) and after["InvocationID"] != db_state["InvocationID"]
    # Requires= stops api while db is down; systemd starts it again with db's restart.
    wait_for(lambda: show(api_unit, "ActiveState")["ActiveState"] == "active", timeout=30)
    wait_for(lambda: machine_property(db, "Leader") == after["MainPID"])  # registered again, new leader

    subprocess.run(["journalctl", "--sync"], check=True)
    journal = subprocess.run(["journalctl", "-u", db_unit, "-o", "cat"], capture_output=True, text=True, check=True)
    lines = [line for line in journal.stdout.splitlines() if line.endswith(" up")]
    assert lines == [f"{db} up", f"{db} up"]
    assert specs.sdrun("logs", db).stdout.splitlines() == lines

    systemctl("stop", api_unit, db_unit)
    wait_for(lambda: not {db, api} & machines().keys())  # machined drops them with their units


def test_a_notify_spec_is_active_only_after_ready(specs: Specs, rootfs: Path) -> None:
    name = unique_name("ready")
    shared = STATE / "tests" / name
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # the app runs as uid 1000: a root app may only notify from a user namespace
    python_rootfs = python_rootfs_at(rootfs, STATE / "tests" / f"{name}-rootfs")
    code = (
        "import os, socket, time\n"
        "open('/shared/waiting', 'w').close()\n"
        "while not os.path.exists('/shared/go'): time.sleep(0.05)\n"
        "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(1000)\n"
    )
    volumes = HOST_USR.replace("]\n", f', "{shared}:/shared"]\n')
    exec_line = f"exec = {toml_list([HOST_PYTHON, '-c', code])}\n"
    unit = specs.write(
        name, f'rootfs = "{python_rootfs}"\n{exec_line}{volumes}net = "none"\nnotify = true\nuser = "1000"\n'
    )
    specs.reload()
    assert show(unit, "Type", "NotifyAccess") == {"Type": "notify", "NotifyAccess": "all"}
    assert systemctl("start", "--no-block", unit).returncode == 0
    try:
        wait_for((shared / "waiting").exists, timeout=30)
        assert show(unit, "ActiveState")["ActiveState"] == "activating"
        assert int(show(unit, "MainPID")["MainPID"]) > 0  # the stage1 handed over MAINPID= only
        (shared / "go").touch()
        wait_for(lambda: show(unit, "ActiveState")["ActiveState"] == "active", timeout=30)
    finally:
        systemctl("stop", unit)
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(python_rootfs, ignore_errors=True)


def test_a_socket_activated_spec_gets_its_socket(specs: Specs, rootfs: Path) -> None:
    name = unique_name("sock")
    address = f"/run/{name}.sock"
    python_rootfs = python_rootfs_at(rootfs, STATE / "tests" / f"{name}-rootfs")
    code = (
        "import os, socket\n"
        "connection, _ = socket.socket(fileno=3).accept()\n"
        "connection.sendall(f\"{os.environ['LISTEN_FDS']} {os.environ['LISTEN_PID']} {os.getpid()}\".encode())\n"
    )
    exec_line = f"exec = {toml_list([HOST_PYTHON, '-c', code])}\n"
    service = specs.write(
        name, f'rootfs = "{python_rootfs}"\n{exec_line}{HOST_USR}net = "none"\nlisten = ["{address}"]\n'
    )
    socket_unit = f"sdrun-{name}.socket"
    try:
        specs.reload()
        specs.start(socket_unit)
        assert show(service, "ActiveState")["ActiveState"] == "inactive"  # until the first connection
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(60)
            client.connect(address)
            fds, listen_pid, pid = client.recv(100).decode().split()
        assert fds == "1" and listen_pid == pid == "1"  # the app is PID 1 of its namespace
        assert show(service, "Triggers", "TriggeredBy")["TriggeredBy"] == socket_unit
    finally:
        shutil.rmtree(python_rootfs, ignore_errors=True)


def test_a_bad_spec_is_skipped_and_the_others_generated(specs: Specs, rootfs: Path) -> None:
    name = unique_name("gen")
    good = specs.write(name, f'rootfs = "{rootfs}"\nexec = ["sh", "-c", "exec sleep 1000"]\nnet = "none"\n')
    bad = specs.write(f"{name}-bad", f'rootfs = "{rootfs}"\nexec = ["true"]\nfavourite_colour = "blue"\n')
    specs.reload()
    assert show(bad, "LoadState")["LoadState"] == "not-found"  # reported in the journal, skipped
    subprocess.run(["journalctl", "--sync"], check=True)
    reported = subprocess.run(
        ["journalctl", "-t", "sdrun-generator", "-p", "err", "-o", "cat"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert f"{SPEC_DIR}/{name}-bad.toml: unknown key 'favourite_colour'" in reported
    assert show(good, "LoadState", "FragmentPath") == {
        "LoadState": "loaded",
        "FragmentPath": f"/run/systemd/generator/{good}",
    }
    specs.start(good)
    assert show(good, "SubState")["SubState"] == "running"


def python_rootfs_at(rootfs: Path, target: Path) -> Path:
    """The busybox rootfs with a place for /usr/bin/python3, which the host's /usr fills at run time."""
    shutil.copytree(rootfs, target, symlinks=True)
    (target / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (target / HOST_PYTHON.lstrip("/")).touch(mode=0o755)
    return target
