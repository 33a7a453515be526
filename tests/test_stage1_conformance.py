"""The stage1 contract (docs/stage1.md), checked the same way for every backend: the built-in ones
and a fourth, tests/stub_stage1, written against the documented contract only and found as a
backend of another distribution is, by its entry point.

Each case runs a real pod on the real systemd of the harness: the app's exit status comes back
from `sdrun run --rm`; `sdrun run -d` returns with the unit active and the app what runs, and
no stage1 process beside it; `notify = true` is honoured or refused, never ignored; no mount of
the pod's reaches the host's mount table; `sdrun gc` is idempotent. A kvm case boots a VM under
TCG (seconds per start): two boots, with generous timeouts.
"""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdrun.errors import SpecError
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore
from sdrun.spec import PodSpec
from stage1 import INTERFACE_VERSION
from stage1.interface import ENTRY_POINT_GROUP, Stage1, entry_command, installed_backends
from tests.conftest import STATE_BASE, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for
from tests.test_kvm import VM_TIMEOUT, needs_vm
from tests.test_units_systemd import HOST_PYTHON, HOST_USR

SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
BUSCTL_CALL = ("busctl", "--json=short", "call", *SYSTEMD)
SEALED_VIEWS = "/run/sdrun/python"  # the one mount sdrun keeps on the host (docs/stage1.md)
STUB_ENTRY_POINT = f"[{ENTRY_POINT_GROUP}]\nstub = tests.stub_stage1.backend\n"


@dataclass(frozen=True)
class Backend:
    name: str
    options: tuple[str, ...]  # the `sdrun run` options that pick it (and a network it takes)
    # The unit's main process while the app runs: the app itself, or what the backend's part of
    # docs/stage1.md says stays instead (kvm: vm.sh, which exits with the app's status).
    main: str
    # What the contract lets stay in the unit beside the app: processes that are not the stage1's
    # Python (kvm: vm.sh's shell, qemu, virtiofsd). Never an interpreter of sdrun's.
    helpers: frozenset[str] = frozenset()
    notify: bool = False  # honours `notify = true` (the others refuse it)
    timeout: float = 60  # seconds, for one sdrun command


BACKENDS = [
    pytest.param(
        Backend("namespace", ("--stage1", "namespace", "--net", "none"), "sleep", notify=True), id="namespace"
    ),
    pytest.param(Backend("fly", ("--stage1", "fly"), "sleep"), id="fly"),
    pytest.param(
        Backend(
            "kvm",
            ("--stage1", "kvm", "--kvm-accel", "tcg"),  # TCG: KVM boots no guest on the test machines
            "sh",
            frozenset({"sh", "qemu-system-x86", "virtiofsd"}),  # comm: 15 characters at most
            timeout=VM_TIMEOUT,
        ),
        id="kvm",
        marks=[needs_vm, pytest.mark.timeout(4 * VM_TIMEOUT)],
    ),
    pytest.param(Backend("stub", ("--stage1", "stub"), "sleep"), id="stub"),
]


@pytest.fixture(scope="module")
def stub_site() -> Iterator[Path]:
    """A directory on PYTHONPATH with the stub's distribution metadata, as pip would install a
    third-party backend: its entry point is all that tells sdrun of it."""
    site = STATE_BASE / f"stub-site-{uuid.uuid4().hex[:8]}"
    metadata = site / "sdrun_stub_stage1-0.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: sdrun-stub-stage1\nVersion: 0\n")
    (metadata / "entry_points.txt").write_text(STUB_ENTRY_POINT)
    yield site
    for path in (metadata / "METADATA", metadata / "entry_points.txt"):
        path.unlink()
    metadata.rmdir()
    site.rmdir()


@dataclass
class ContractSdrun(Sdrun):
    """The sdrun CLI with the stub's distribution on its path, for every command (gc and rm too)."""

    site: Path = Path()

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "PYTHONPATH": str(self.site)}
        return super().__call__(*args, check=check, timeout=timeout, env=environment, **kwargs)


@pytest.fixture
def contract_sdrun(sdrun: Sdrun, stub_site: Path) -> Iterator[ContractSdrun]:
    runner = ContractSdrun(sdrun.root, sdrun.units_at_start, stub_site)
    yield runner
    runner("gc", check=False)  # before the plain fixture's, which knows no stub
    for pod in runner.pods():
        runner("rm", "-f", pod, check=False)


def mount_points() -> set[tuple[str, str]]:
    """The host's mount table (the harness's mount namespace, where systemd runs) as (mount ID,
    mount point): a mount made again where one was is another. The sealed interpreter's view,
    which the first start mounts and every later one keeps, is left out."""
    with open("/proc/self/mountinfo") as table:
        mounts = {(fields[0], fields[4]) for fields in (line.split() for line in table)}
    return {(number, point) for number, point in mounts if not point.startswith(SEALED_VIEWS)}


def unit_processes(unit: str) -> list[tuple[int, str, str]]:
    """(pid, comm, executable) of every process in the unit's cgroup, its sub-cgroups' too (the
    executable as the process's root shows it)."""
    reply = subprocess.run(
        [*BUSCTL_CALL, "GetUnitProcesses", "s", unit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    processes = []
    for _, pid, _ in json.loads(reply)["data"][0]:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        processes.append((int(pid), comm, os.readlink(f"/proc/{pid}/exe")))
    return processes


@needs_systemd
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_apps_exit_status_comes_back(contract_sdrun: ContractSdrun, rootfs: Path, backend: Backend) -> None:
    run = ("run", "--rm", *backend.options, "--rootfs", str(rootfs), "--", "/bin/sh", "-c", "exit 7")
    result = contract_sdrun(*run, check=False, timeout=backend.timeout)
    assert result.returncode == 7, result.stderr
    assert contract_sdrun.pods() == [] and contract_sdrun.new_units() == set()


@needs_systemd
@pytest.mark.parametrize("backend", BACKENDS)
def test_run_d_returns_with_the_app_running_alone_and_leaves_nothing(
    contract_sdrun: ContractSdrun, rootfs: Path, backend: Backend
) -> None:
    """Readiness, no resident stage1, no mount on the host, while the pod runs and after; then gc twice."""
    name = unique_name(backend.name)
    unit = f"sdrun-{name}.service"
    before = mount_points()
    run = ("run", "-d", "--name", name, *backend.options, "--rootfs", str(rootfs), "--", "/bin/sleep", "1000")
    contract_sdrun(*run, timeout=backend.timeout)
    # Readiness: the start job has ended, and what runs is the app (or the backend's documented main process).
    shown = systemctl_show(unit, "ActiveState", "SubState", "MainPID")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    processes = unit_processes(unit)
    main = [comm for pid, comm, _ in processes if pid == int(shown["MainPID"])]
    assert main == [backend.main], processes
    # No resident stage1: no interpreter in the unit, only the app and what the contract allows.
    assert not [process for process in processes if process[1].startswith("python")], processes
    assert not [process for process in processes if os.path.basename(process[2]).startswith("python")], processes
    assert {comm for _, comm, _ in processes} <= {"sleep", *backend.helpers}, processes
    # Mounts: every one of the pod's lives in a mount namespace of its own.
    assert mount_points() - before == set()
    contract_sdrun("stop", name, timeout=backend.timeout)
    assert mount_points() - before == set()
    # gc: the first removes the ended pod, the second finds nothing to do; nothing is left.
    first = contract_sdrun("gc", timeout=backend.timeout)
    assert name in first.stdout
    second = contract_sdrun("gc", timeout=backend.timeout)
    assert (second.stdout, second.stderr) == ("", "")
    assert contract_sdrun.pods() == [] and contract_sdrun.names() == []
    assert contract_sdrun.new_units() == set()
    assert mount_points() - before == set()


@pytest.fixture
def notify_rootfs(contract_sdrun: ContractSdrun, rootfs: Path) -> Path:
    """The busybox rootfs with a place for the host's python3, which a volume of the host's /usr fills."""
    import shutil

    copy = contract_sdrun.root / "python-rootfs"
    shutil.copytree(rootfs, copy, symlinks=True)
    (copy / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (copy / HOST_PYTHON.lstrip("/")).touch(mode=0o755)
    return copy


@needs_systemd
@pytest.mark.parametrize("backend", BACKENDS)
def test_notify_is_honoured_or_refused(contract_sdrun: ContractSdrun, notify_rootfs: Path, backend: Backend) -> None:
    """`notify = true`: `run -d` returns once the app said READY=1, not before; a backend that cannot pass
    the socket to the app refuses it in one line and leaves nothing (kvm before it boots a VM)."""
    name = unique_name("ready")
    shared = contract_sdrun.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the app runs as uid 1000: a root app may only notify from a user namespace
    code = (
        "import os, socket, time\n"
        "open('/shared/waiting', 'w').close()\n"
        "while not os.path.exists('/shared/go'): time.sleep(0.05)\n"
        "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(1000)\n"
    )
    spec = contract_sdrun.root / "notify.toml"
    spec.write_text("notify = true\n")  # a setting of files only: `sdrun run` has no flag for it
    run = ("run", "-d", "--name", name, "--spec", str(spec), "--user", "1000", *backend.options)
    volumes = (*HOST_USR, "-v", f"{shared}:/shared")
    command = (*run, "--rootfs", str(notify_rootfs), *volumes, "--", HOST_PYTHON, "-c", code)
    if not backend.notify:
        result = contract_sdrun(*command, check=False)
        assert result.returncode == 125 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("sdrun: notify = true ")
        assert contract_sdrun.pods() == [] and contract_sdrun.new_units() == set()
        return
    finished: list[subprocess.CompletedProcess[str]] = []
    starting = threading.Thread(target=lambda: finished.append(contract_sdrun(*command, check=False)))
    starting.start()
    try:
        wait_for(lambda: (shared / "waiting").exists() or finished)
        assert finished == [], finished  # `run -d` waits for the app's READY=1
        unit = f"sdrun-{name}.service"
        assert systemctl_show(unit, "ActiveState")["ActiveState"] == "activating"
        assert finished == []  # still
    finally:
        (shared / "go").touch()
        starting.join(timeout=60)
    assert finished and finished[0].returncode == 0, finished
    assert systemctl_show(unit, "ActiveState")["ActiveState"] == "active"


# What needs no systemd: how the stub is found, and the versions.


def test_a_backend_outside_sdrun_is_found_by_its_entry_point(stub_site: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(stub_site))
    try:
        assert installed_backends()["stub"] == "tests.stub_stage1.backend"
        backend = Stage1.named("stub")
    finally:
        sys.path.remove(str(stub_site))
    assert type(backend).__module__ == "tests.stub_stage1.backend"
    pod = Pod("0" * 32, tmp_path, PodSpec("p", "stub", rootfs="/"), 0.0)
    _, argv = entry_command("tests.stub_stage1", pod)
    assert "__import__('tests.stub_stage1.__main__')" in argv[4]
    assert argv[-2:] == (f"--interface={INTERFACE_VERSION}", str(tmp_path))


def test_the_entry_of_a_backend_installed_elsewhere_finds_its_package(tmp_path: Path) -> None:
    """Its directory goes on the entry's sys.path after sdrun's, which the unit's `python -S` has not."""
    package = tmp_path / "site" / "elsewhere_stage1"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("import sys\nimport stage1\nprint(stage1.entry_pod_dir(sys.argv))\n")
    pod = Pod("0" * 32, tmp_path / "pod", PodSpec("p", "elsewhere", rootfs="/"), 0.0)
    sys.path.insert(0, str(package.parent))
    try:
        _, argv = entry_command("elsewhere_stage1", pod)
    finally:
        sys.path.remove(str(package.parent))
        del sys.modules["elsewhere_stage1"]
    assert argv[4].startswith(f"__import__('sys').path.insert(0, {str(package.parent)!r}) or ")
    started = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, check=False, timeout=60)
    assert (started.returncode, started.stdout, started.stderr) == (0, f"{pod.dir}\n", "")


def test_an_unknown_backend_is_refused_with_those_there_are() -> None:
    with pytest.raises(SpecError, match="unknown stage1 'nosuch'") as refused:
        Stage1.named("nosuch")
    assert "fly, kvm, namespace" in str(refused.value.hint)


def test_a_backend_of_a_newer_interface_is_refused() -> None:
    class Future(Stage1, name="future"):
        interface_version = INTERFACE_VERSION + 1

    try:
        with pytest.raises(SpecError, match=f"needs interface version {INTERFACE_VERSION + 1}"):
            Stage1.named("future")
    finally:
        del Stage1.registry["future"]


ENTRIES = ["stage1.namespace", "stage1.fly", "stage1.kvm", "tests.stub_stage1"]
PLANS = {
    "stage1.namespace": "namespace.plan",
    "stage1.fly": "fly.plan",
    "stage1.kvm": "qemu.json",  # JSON; the kvm entry reads the pod's manifest first
    "tests.stub_stage1": "stub.plan",
}


def run_entry_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.mark.parametrize("module", ENTRIES)
def test_an_entry_refuses_a_unit_of_another_interface_version(module: str, tmp_path: Path) -> None:
    result = run_entry_module(module, "run", f"--interface={INTERFACE_VERSION + 1}", str(tmp_path))
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1
    assert f"is for stage1 interface version {INTERFACE_VERSION + 1}" in result.stderr


@pytest.mark.parametrize("module", sorted(PLANS))
def test_an_entry_refuses_a_plan_of_another_interface_version(module: str, tmp_path: Path) -> None:
    pod = PodStore(Paths(tmp_path)).create(PodSpec("p", module.rsplit(".", maxsplit=1)[-1], rootfs="/"))
    (pod.dir / "stage1").mkdir()
    plan = pod.dir / "stage1" / PLANS[module]
    newer = {"interface": INTERFACE_VERSION + 1}
    plan.write_bytes(json.dumps(newer).encode() if plan.suffix == ".json" else marshal.dumps(newer))
    result = run_entry_module(module, "run", f"--interface={INTERFACE_VERSION}", str(pod.dir))
    assert result.returncode == 125
    assert result.stderr == (
        f"sdrun stage1: {plan} is for stage1 interface version {INTERFACE_VERSION + 1}, and this sdrun's entry "
        f"implements version {INTERFACE_VERSION}: write it again with this sdrun (sdrun run, or sdrun install "
        "--replace)\n"
    )
