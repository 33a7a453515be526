"""Installed pods (`sdrun install`) on the real systemd: dependencies, restarts, readiness, socket
activation, machined and the journal; tests/test_units_generator.py has the same through spec
files. Units go to /etc/systemd/system, which the harness's overlay discards at shutdown; each
test uninstalls what it installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Sdrun, needs_systemd, systemctl_show, unique_name
from tests.test_image_support import umoci_image

pytestmark = needs_systemd
HOST_PYTHON = "/usr/bin/python3"
# The busybox rootfs has no sd_notify client: tests bind the host's /usr to run its python3 inside.
HOST_USR = ("-v", "/usr:/usr:ro", "-v", "/lib64:/lib64:ro", "-v", "/lib:/lib:ro")


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def state(unit: str) -> dict[str, str]:
    return systemctl_show(
        unit, "ActiveState", "SubState", "MainPID", "NRestarts", "ActiveEnterTimestampMonotonic", "LoadState"
    )


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


def start(*units: str) -> None:
    result = systemctl("start", *units)
    journal = subprocess.run(["journalctl", "-n", "30", "--no-pager"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{result.stderr}\n{journal.stdout}"


def machines() -> list[str]:
    output = subprocess.run(["machinectl", "list", "--no-legend"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in output.splitlines() if line.strip()]


@pytest.fixture
def python_rootfs(sdrun: Sdrun, rootfs: Path) -> Path:
    """The busybox rootfs with a place for /usr/bin/python3, which the host's /usr fills at run time."""
    copy = sdrun.root / "python-rootfs"
    shutil.copytree(rootfs, copy, symlinks=True)
    (copy / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (copy / HOST_PYTHON.lstrip("/")).touch(mode=0o755)
    return copy


def test_dependencies_restarts_machined_and_the_journal(sdrun: Sdrun, rootfs: Path, installed: list[str]) -> None:
    db, api = unique_name("db"), unique_name("api")
    app = ["--", "sh", "-c", "echo $0 up; exec sleep 1000"]
    sdrun(
        "install", db, "--net", "none", "--rootfs", str(rootfs), "--restart", "always", "--restart-sec", "0.1", *app, db
    )
    installed.append(db)
    sdrun("install", api, "--net", "none", "--rootfs", str(rootfs), "--requires", db, *app, api)
    installed.append(api)
    db_unit, api_unit = f"sdrun-{db}.service", f"sdrun-{api}.service"
    assert state(db_unit)["ActiveState"] == "inactive"

    start(api_unit)
    db_state, api_state = state(db_unit), state(api_unit)
    assert db_state["ActiveState"] == api_state["ActiveState"] == "active"
    api_began = int(systemctl_show(api_unit, "InactiveExitTimestampMonotonic")["InactiveExitTimestampMonotonic"])
    assert int(db_state["ActiveEnterTimestampMonotonic"]) <= api_began  # db was up before api started
    wait_for(lambda: {db, api} <= set(machines()))
    status = subprocess.run(
        ["machinectl", "show", db, "--property=Leader"], capture_output=True, text=True, check=False
    )
    assert status.stdout.strip() == f"Leader={db_state['MainPID']}"

    os.kill(int(db_state["MainPID"]), signal.SIGKILL)
    wait_for(lambda: state(db_unit)["NRestarts"] == "1" and state(db_unit)["SubState"] == "running")
    new_pid = state(db_unit)["MainPID"]
    assert new_pid != db_state["MainPID"]
    leader = ["machinectl", "show", db, "--property=Leader", "--value"]
    # registered again by the restarted unit, not the machine of the killed app left over
    wait_for(lambda: subprocess.run(leader, capture_output=True, text=True, check=False).stdout.strip() == new_pid)

    subprocess.run(["journalctl", "--sync"], check=True)
    journal = subprocess.run(
        ["journalctl", "-u", db_unit, "-o", "cat"], capture_output=True, text=True, check=True
    ).stdout
    from_journal = [line for line in journal.splitlines() if line.startswith(db)]
    assert from_journal == [f"{db} up", f"{db} up"]
    assert sdrun("logs", db).stdout.splitlines() == from_journal  # one stream across restarts
    status_text = systemctl("status", db_unit, "--no-pager", "--lines=20").stdout
    assert "active (running)" in status_text and f"{db} up" in status_text

    sdrun("uninstall", api)
    sdrun("uninstall", db)
    installed.clear()
    for unit in (db_unit, api_unit):
        assert state(unit)["LoadState"] == "not-found"
        assert not Path("/etc/systemd/system", unit).exists()
    assert not {db, api} & set(machines())
    assert sdrun.pods() == []


def test_a_notify_app_is_active_only_once_it_says_ready(
    sdrun: Sdrun, python_rootfs: Path, installed: list[str]
) -> None:
    name = unique_name("ready")
    shared = sdrun.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the app runs as uid 1000: a root app may only notify from a user namespace
    code = (
        "import os, socket, time\n"
        "open('/shared/waiting', 'w').close()\n"
        "while not os.path.exists('/shared/go'): time.sleep(0.05)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(1000)\n"
    )
    volumes = (*HOST_USR, "-v", f"{shared}:/shared")
    sdrun(
        "install",
        name,
        "--notify",
        "--user",
        "1000",
        "--net",
        "none",
        "--rootfs",
        str(python_rootfs),
        *volumes,
        "--",
        HOST_PYTHON,
        "-c",
        code,
    )
    installed.append(name)
    unit = f"sdrun-{name}.service"
    assert systemctl("start", "--no-block", unit).returncode == 0
    wait_for((shared / "waiting").exists)
    assert state(unit)["ActiveState"] == "activating"
    assert int(state(unit)["MainPID"]) > 0  # the stage1 handed its MainPID over, not READY=1
    (shared / "go").touch()
    wait_for(lambda: state(unit)["ActiveState"] == "active")


def test_a_notify_app_as_root_on_the_host_is_refused(sdrun: Sdrun, rootfs: Path) -> None:
    """systemd would take MAINPID= naming any host process from it: `sdrun stop` would kill that."""
    result = sdrun("install", unique_name("root"), "--notify", "--rootfs", str(rootfs), "--", "sleep", "1", check=False)
    assert result.returncode == 125
    assert result.stderr.startswith("sdrun: notify = true with the app as root needs --private-users")
    assert result.stderr.count("\n") == 1
    assert sdrun.pods() == [] and sdrun.new_units() == set()


def test_a_socket_activated_app_receives_its_socket(sdrun: Sdrun, python_rootfs: Path, installed: list[str]) -> None:
    name = unique_name("sock")
    address = f"/run/{name}.sock"
    code = (
        "import os, socket\n"
        "listener = socket.socket(fileno=3)\n"
        "connection, _ = listener.accept()\n"
        "report = f\"{os.environ['LISTEN_FDS']} {os.environ['LISTEN_PID']} {os.getpid()}\"\n"
        "connection.sendall(report.encode())\n"
        "connection.close()\n"
    )
    sdrun(
        "install",
        "--now",
        name,
        "--listen",
        address,
        "--net",
        "none",
        "--rootfs",
        str(python_rootfs),
        *HOST_USR,
        "--",
        HOST_PYTHON,
        "-c",
        code,
    )
    installed.append(name)
    assert state(f"sdrun-{name}.socket")["ActiveState"] == "active"
    assert state(f"sdrun-{name}.service")["ActiveState"] == "inactive"  # started by the first connection
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(60)
        client.connect(address)
        fds, listen_pid, pid = client.recv(100).decode().split()
    assert fds == "1" and listen_pid == pid


def test_logs_select_by_time_all_pods_and_json(sdrun: Sdrun, rootfs: Path) -> None:
    first, second = unique_name("one"), unique_name("two")
    sdrun("run", "--name", first, "--rootfs", str(rootfs), "--", "echo", "first line")
    sdrun("run", "--name", second, "--rootfs", str(rootfs), "--", "echo", "second line")
    assert sdrun("logs", "--all").stdout.splitlines() == [f"{first} | first line", f"{second} | second line"]
    record = json.loads(sdrun("logs", "--json", first).stdout.splitlines()[0])
    assert record["MESSAGE"] == "first line" and record["SYSLOG_IDENTIFIER"] == first
    assert record["_SYSTEMD_UNIT"] == f"sdrun-{first}.service"
    assert sdrun("logs", "--since", "2000-01-01", "--until", "2000-01-02", first).stdout == ""
    assert sdrun("logs", "--since", "1h", first).stdout == "first line\n"
    bad = sdrun("logs", "--since", "yesterday-ish", first, check=False)
    assert bad.returncode == 125 and bad.stderr.startswith("sdrun: invalid time")
    pod_uuid = json.loads(sdrun("status", "--json", first).stdout)["uuid"]
    assert sdrun("logs", "--since", "1h", "-n", "1", "--all").stdout == f"{second} | second line\n"
    sdrun("rm", first)
    assert sdrun("logs", pod_uuid).stdout == "first line\n"  # a removed pod's lines, by UUID
    assert sdrun("logs", "--all").stdout.splitlines() == [f"{first} | first line", f"{second} | second line"]


def machine_show(name: str, *properties: str) -> dict[str, str]:
    result = subprocess.run(
        ["machinectl", "show", name, *(f"--property={p}" for p in properties)],
        capture_output=True,
        text=True,
        check=False,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def machine_status(name: str) -> str:
    return subprocess.run(
        ["machinectl", "status", name, "--no-pager"], capture_output=True, text=True, check=True
    ).stdout


def test_machinectl_shows_detached_pods_with_their_leader_and_address(sdrun: Sdrun, rootfs: Path) -> None:
    # machined stopped: the first registration bus-activates it, and must not be lost meanwhile.
    systemctl("stop", "systemd-machined.service")
    plain, networked = unique_name("plain"), unique_name("netted")
    app = ["--rootfs", str(rootfs), "--", "sh", "-c", "trap exit TERM; sleep 1000 & wait"]
    sdrun("run", "-d", "--name", plain, "--net", "none", *app)
    assert plain in machines()  # registered before `run -d` returned
    sdrun("run", "-d", "--name", networked, "--net", "default", *app)
    assert networked in machines()

    pod = json.loads(sdrun("status", "--json", networked).stdout)
    unit = f"sdrun-{networked}.service"
    shown = machine_show(networked, "Leader", "Unit", "Class", "Service", "Id")
    assert shown["Leader"] == state(unit)["MainPID"] and shown["Unit"] == unit
    assert (shown["Class"], shown["Service"]) == ("container", "sdrun")
    assert shown["Id"] == pod["uuid"].replace("-", "")
    status = machine_status(networked)
    veth = f"sdv{pod['uuid'].replace('-', '')[:12]}"
    assert f"Iface: {veth}" in status  # the host end of its veth, from RegisterMachineWithNetwork
    address = pod["ip"]
    assert address and f"Address: {address}" in status  # machined reads it in the pod's namespace
    assert f"Leader: {shown['Leader']} (sh)" in status
    listing = subprocess.run(["machinectl", "list", "--no-legend"], capture_output=True, text=True, check=True)
    assert any(line.split()[0] == networked and address in line for line in listing.stdout.splitlines())
    assert "Iface:" not in machine_status(plain) and "Address:" not in machine_status(plain)

    sdrun("stop", plain)
    sdrun("rm", "-f", networked)
    wait_for(lambda: not {plain, networked} & set(machines()))  # gone with their units


def test_a_failing_health_check_restarts_the_pod_and_the_checks_go_on(
    sdrun: Sdrun, rootfs: Path, installed: list[str]
) -> None:
    name = unique_name("health")
    shared = sdrun.root / "health"
    shared.mkdir()
    (shared / "sick").touch()
    # Every check counts itself; the first fails (and heals the pod), the others pass.
    check = "echo >> /shared/checks; if [ -e /shared/sick ]; then rm /shared/sick; exit 1; fi"
    app = ["--", "sh", "-c", "trap exit TERM; sleep 1000 & wait"]
    volume = ("-v", f"{shared}:/shared")
    health = ("--healthcheck", f"sh -c '{check}'", "--healthcheck-interval", "1")
    sdrun("install", "--now", name, "--net", "none", *health, "--rootfs", str(rootfs), *volume, *app)
    installed.append(name)
    unit, checker = f"sdrun-{name}.service", f"sdrun-health@{name}.service"
    first = systemctl_show(unit, "InvocationID", "MainPID")

    wait_for(lambda: systemctl_show(unit, "InvocationID")["InvocationID"] != first["InvocationID"])
    wait_for(lambda: state(unit)["SubState"] == "running")
    second = systemctl_show(unit, "InvocationID", "MainPID")
    assert second["MainPID"] not in ("0", first["MainPID"])
    # More checks than the default start limit (5 in 10 s) allows: the checks go on, the pod stays.
    wait_for(lambda: len((shared / "checks").read_text().splitlines()) >= 8, timeout=40)
    assert systemctl_show(unit, "InvocationID")["InvocationID"] == second["InvocationID"]
    assert systemctl_show(f"sdrun-health@{name}.timer", "ActiveState")["ActiveState"] == "active"

    subprocess.run(["journalctl", "--sync"], check=True)
    journal = subprocess.run(["journalctl", "-u", checker, "-o", "cat"], capture_output=True, text=True, check=True)
    assert f"sdrun: health check of pod '{name}' failed (exit status 1): restarting it" in journal.stdout
    # The check that asked for the restart ended by itself, not killed by it.
    assert "code=exited, status=1/FAILURE" in journal.stdout and "code=killed" not in journal.stdout
    assert "start-limit" not in journal.stdout


def test_a_private_users_pod_passes_its_health_checks_as_its_mapped_root(
    sdrun: Sdrun, rootfs: Path, installed: list[str]
) -> None:
    """The check enters the pod's user namespace, and its network namespace, which the host owns."""
    name = unique_name("health")
    shared = sdrun.root / "health"
    shared.mkdir()
    shared.chmod(0o777)  # the pod's root is host uid 410000
    check = "id -u >> /shared/checks; cat /proc/self/uid_map >> /shared/checks"
    health = ("--healthcheck", f"sh -c '{check}'", "--healthcheck-interval", "1")
    app = ["--", "sh", "-c", "trap exit TERM; sleep 1000 & wait"]
    options = ("--private-users=410000:65536", "-v", f"{shared}:/shared", *health)
    sdrun("install", "--now", name, *options, "--rootfs", str(rootfs), *app)
    installed.append(name)
    unit = f"sdrun-{name}.service"
    first = systemctl_show(unit, "InvocationID")["InvocationID"]
    checks = shared / "checks"
    wait_for(lambda: checks.exists() and len(checks.read_text().splitlines()) >= 6, timeout=40)
    lines = checks.read_text().splitlines()
    assert lines[0::2][:3] == ["0", "0", "0"]
    assert all(line.split() == ["0", "410000", "65536"] for line in lines[1::2][:3])
    assert systemctl_show(unit, "InvocationID")["InvocationID"] == first  # never restarted


def test_an_installed_image_pod_runs_its_image_and_generate_needs_it_stored(
    sdrun: Sdrun, rootfs: Path, installed: list[str]
) -> None:
    """install pulls (here: imports) what it needs; each start creates the pod from the stored image."""
    layout = sdrun.root / "layout"
    reference = umoci_image(
        layout,
        "svc",
        rootfs,
        "--config.cmd=/bin/sh",
        "--config.cmd=-c",
        "--config.cmd=echo from the image; exec sleep 1000",
    )
    missing = sdrun("generate", "--name", "nope", "no-such-image", check=False)
    assert missing.returncode == 125 and "image no-such-image is not in the image store" in missing.stderr
    assert missing.stdout == ""
    name = unique_name("img")
    unnamed = sdrun.root / "unnamed"  # the layout with no ref.name in its index
    shutil.copytree(layout, unnamed)
    index = json.loads((unnamed / "index.json").read_text())
    for entry in index["manifests"]:
        entry.pop("annotations", None)
    (unnamed / "index.json").write_text(json.dumps(index))
    nameless = sdrun("install", name, "--net", "none", f"oci:{unnamed}", check=False)
    assert nameless.returncode == 125 and "has no name in the store" in nameless.stderr
    sdrun("image", "import", reference, f"{name}-image")
    sdrun("install", name, "--net", "none", f"{name}-image")
    installed.append(name)
    unit = f"sdrun-{name}.service"
    start(unit)
    assert state(unit)["SubState"] == "running"
    wait_for(lambda: sdrun("logs", name).stdout == "from the image\n")


def refused(result: subprocess.CompletedProcess[str], fragment: str) -> bool:
    return result.returncode == 125 and result.stderr.count("\n") == 1 and fragment in result.stderr


def test_install_replaces_an_installed_pod_only_with_replace(sdrun: Sdrun, rootfs: Path, installed: list[str]) -> None:
    name = unique_name("web")
    unit, unit_file = f"sdrun-{name}.service", Path("/etc/systemd/system", f"sdrun-{name}.service")
    app = ("--net", "none", "--rootfs", str(rootfs), "--", "sh", "-c")
    health = ("--healthcheck", "true", "--healthcheck-interval", "600")
    sdrun("install", "--now", name, *health, *app, "echo first; exec sleep 1000")
    installed.append(name)
    first, written = state(unit), unit_file.read_text()
    timer = f"sdrun-health@{name}.timer"
    assert systemctl_show(timer, "ActiveState")["ActiveState"] == "active"

    again = sdrun("install", "--now", name, *app, "echo second; exec sleep 1000", check=False)
    assert refused(again, f"sdrun: pod '{name}' is installed already ({unit_file}) (hint: 'sdrun install --replace")
    assert unit_file.read_text() == written and state(unit)["MainPID"] == first["MainPID"]

    # --replace writes the new units, drops those the new install has not (the health check's),
    # and --now restarts the running pod on them.
    sdrun("install", "--replace", "--now", name, *app, "echo second; exec sleep 1000")
    assert "echo second" in unit_file.read_text()
    assert state(unit)["SubState"] == "running" and state(unit)["MainPID"] != first["MainPID"]
    wait_for(lambda: sdrun("logs", name).stdout == "first\nsecond\n")
    assert not Path("/etc/systemd/system", timer).exists()
    assert systemctl_show(timer, "LoadState")["LoadState"] == "not-found"


def test_install_requires_only_installed_pods(sdrun: Sdrun, rootfs: Path, installed: list[str]) -> None:
    name, transient = unique_name("api"), unique_name("run")
    app = ("--net", "none", "--rootfs", str(rootfs), "--", "sleep", "1000")
    missing = sdrun("install", name, "--requires", "nosuchpod", *app, check=False)
    assert refused(missing, "--requires nosuchpod: no installed pod (sdrun-nosuchpod.service is not-found)")
    sdrun("run", "-d", "--name", transient, *app)
    of_run = sdrun("install", name, "--requires", transient, *app, check=False)
    sdrun("rm", "-f", transient)
    assert refused(of_run, f"--requires {transient}: a pod of 'sdrun run', gone at the next boot")
    assert not Path("/etc/systemd/system", f"sdrun-{name}.service").exists()
    assert sdrun.pods() == []
