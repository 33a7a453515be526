"""Shared fixtures. Tests that need a real systemd run inside one: `make test` boots a
throwaway systemd (tests/harness/sdboot.py) when the host has none, and runs pytest in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SDRUN = str(VENV_BIN / "sdrun")
# sdrun's state must sit on a real filesystem (not the harness's overlay): the
# harness mounts a tmpfs at /var/lib/sdrun.
STATE_BASE = Path(os.environ.get("SDRUN_TEST_STATE", "/var/lib/sdrun/tests"))


def systemd_available() -> bool:
    return Path("/run/systemd/system").is_dir() and Path("/run/dbus/system_bus_socket").exists()


needs_systemd = pytest.mark.skipif(not systemd_available(), reason="needs a running systemd: run through `make test`")


@dataclass
class Sdrun:
    """The sdrun CLI with a private --root, run as a subprocess like a user would."""

    root: Path
    units_at_start: frozenset[str] = frozenset()

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = subprocess.run(
            [SDRUN, "--root", str(self.root), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise AssertionError(f"sdrun {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def pods(self) -> list[str]:
        pods = self.root / "pods"
        return sorted(p.name for p in pods.iterdir()) if pods.exists() else []

    def names(self) -> list[str]:
        names = self.root / "names"
        return sorted(p.name for p in names.iterdir()) if names.exists() else []

    def new_units(self) -> set[str]:
        """sdrun's units that systemd knows now and did not when this fixture began."""
        return set(sdrun_units() - self.units_at_start)


def sdrun_units() -> frozenset[str]:
    """Every unit of any sdrun root that systemd has loaded, active or not."""
    listing = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "sdrun-*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return frozenset(line.split()[0] for line in listing.splitlines() if line.strip())


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """A busybox rootfs built from Debian's busybox-static (shared, never written by tests)."""
    target = PROJECT / "build" / "rootfs"
    if not (target / "bin" / "busybox").exists():
        subprocess.run([str(PROJECT / "tools" / "mkrootfs.sh"), str(target)], check=True)
    return target


@pytest.fixture
def private_rootfs(rootfs: Path) -> Iterator[Path]:
    """A writable copy of the busybox rootfs that a test may booby-trap (on /var/lib/sdrun, a real filesystem)."""
    copy = STATE_BASE / f"rootfs-{uuid.uuid4().hex[:8]}"
    shutil.copytree(rootfs, copy, symlinks=True)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture
def sdrun() -> Iterator[Sdrun]:
    root = STATE_BASE / uuid.uuid4().hex[:12]
    root.mkdir(parents=True)
    runner = Sdrun(root, sdrun_units() if systemd_available() else frozenset())
    yield runner
    if systemd_available():
        runner("gc", check=False)
        for pod in runner.pods():  # anything still running: the test failed half-way
            runner("rm", "-f", pod, check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def installed(sdrun: Sdrun) -> Iterator[list[str]]:
    """Names of pods a test installs, uninstalled afterwards whatever happens (dependents first)."""
    names: list[str] = []
    yield names
    for name in reversed(names):
        sdrun("uninstall", name, check=False)


def wait_for(predicate: object, timeout: float = 20.0, interval: float = 0.05) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def systemctl_show(unit: str, *properties: str) -> dict[str, str]:
    output = subprocess.run(
        ["systemctl", "show", unit, *(f"--property={p}" for p in properties)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
