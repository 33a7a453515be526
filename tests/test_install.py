"""`make install` on the throwaway systemd, as on a host: the CLI in its own virtualenv without
the test toolchain, the generator, the gc timer and the sdrun@ template, then a pod started as
sdrun@NAME from /etc/sdrun/NAME.toml, and `make uninstall`. /opt, /usr/local and /etc are the
throwaway systemd's overlay; pip installs from build/wheels (`make wheels`), since the harness's
network namespace reaches no package index."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrun.units import installed_pod_uuid
from tests.conftest import PROJECT, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd
SDRUN_HOME = Path("/opt/sdrun")
VENV = SDRUN_HOME / "venv"
PREFIX = Path("/usr/local")
UNIT_DIR = PREFIX / "lib/systemd/system"
GENERATOR = PREFIX / "lib/systemd/system-generators/sdrun-generator"
WHEELS = PROJECT / "build" / "wheels"
STATE = Path("/var/lib/sdrun")


def make(target: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS)}
    return subprocess.run(
        ["make", "-s", "-C", str(PROJECT), target], capture_output=True, text=True, env=env, check=False, timeout=300
    )


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def installed() -> Iterator[None]:
    assert WHEELS.is_dir(), "run `make wheels` first (make test does)"
    assert not VENV.exists() and not GENERATOR.exists()
    result = make("install")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield
    finally:
        make("uninstall")


def test_make_install_a_template_pod_and_make_uninstall(installed: None, rootfs: Path) -> None:
    # The CLI, with sdrun's run-time dependencies only.
    assert Path(PREFIX / "bin/sdrun").resolve() == VENV / "bin/sdrun"
    assert subprocess.run([PREFIX / "bin/sdrun", "--help"], capture_output=True, check=False).returncode == 0
    listed = subprocess.run(
        [VENV / "bin/python", "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    )
    packages = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert {"sdrun", "click", "dbus-next", "systemd-python"} <= packages
    assert not packages & {"pytest", "mypy", "ruff", "hypothesis", "matplotlib"}
    # Every unit of units/, loaded by systemd; the gc timer enabled and running.
    assert GENERATOR.read_text().startswith(f"#!{VENV}/bin/python\n")
    for unit in ("sdrun-gc.service", "sdrun-gc.timer", "sdrun@.service"):
        assert (UNIT_DIR / unit).is_file()
    assert f"ExecStart={VENV}/bin/sdrun gc" in (UNIT_DIR / "sdrun-gc.service").read_text()
    assert systemctl("is-enabled", "sdrun-gc.timer").stdout.strip() == "enabled"
    assert systemctl_show("sdrun-gc.timer", "ActiveState")["ActiveState"] == "active"
    assert (SDRUN_HOME / "docs/units.md").is_file()

    # A spec file, turned into sdrun-NAME.service by the installed generator, started as sdrun@NAME.
    name = unique_name("web")
    spec = Path("/etc/sdrun", f"{name}.toml")
    spec.write_text(f'rootfs = "{rootfs}"\nexec = ["sh", "-c", "echo web up; exec sleep 1000"]\nnet = "none"\n')
    instance, pod_unit = f"sdrun@{name}.service", f"sdrun-{name}.service"
    try:
        assert systemctl("daemon-reload").returncode == 0
        generated = systemctl_show(pod_unit, "FragmentPath", "ExecStart")
        assert generated["FragmentPath"] == f"/run/systemd/generator/{pod_unit}"
        # The installed sdrun, not this checkout's, from its Python's sealed view (docs/stage1.md).
        assert f"'{VENV}/lib/python" in generated["ExecStart"] and "path=/run/sdrun/python/" in generated["ExecStart"]
        assert systemctl("enable", instance).returncode == 0  # a generated unit cannot be; the template's instance can
        assert Path("/etc/systemd/system/multi-user.target.wants", instance).is_symlink()
        started = systemctl("start", instance)
        assert started.returncode == 0, started.stderr
        state = systemctl_show(pod_unit, "ActiveState", "SubState", "MainPID")
        assert (state["ActiveState"], state["SubState"]) == ("active", "running")
        assert systemctl_show(instance, "ActiveState")["ActiveState"] == "active"
        pod = subprocess.run(
            [PREFIX / "bin/sdrun", "status", "--json", name], capture_output=True, text=True, check=True
        )
        assert installed_pod_uuid(name) in pod.stdout
        wait_for(
            lambda: (
                b"web up"
                in subprocess.run(["journalctl", "-u", pod_unit, "-o", "cat"], capture_output=True, check=False).stdout
            )
        )

        assert systemctl("stop", instance).returncode == 0
        # Stopping the instance stops the pod (its PID 1 ignores SIGTERM: the stop timeout's SIGKILL ends it).
        wait_for(lambda: systemctl_show(pod_unit, "ActiveState")["ActiveState"] in ("inactive", "failed"), timeout=30)
        missing = systemctl("start", f"sdrun@{name}-nospec.service")
        assert missing.returncode != 0  # no spec file, no pod
    finally:
        systemctl("disable", instance)
        systemctl("stop", instance, pod_unit)
        spec.unlink()
        shutil.rmtree(STATE / "pods" / installed_pod_uuid(name), ignore_errors=True)
        (STATE / "names" / name).unlink(missing_ok=True)

    # make uninstall takes all of it away (the pods' state, specs and installed pod units stay).
    result = make("uninstall")
    assert result.returncode == 0, result.stderr
    for path in (VENV, PREFIX / "bin/sdrun", GENERATOR, UNIT_DIR / "sdrun@.service", UNIT_DIR / "sdrun-gc.timer"):
        assert not path.exists() and not path.is_symlink()
    assert Path("/etc/sdrun").is_dir()
    assert systemctl_show("sdrun-gc.timer", "LoadState")["LoadState"] == "not-found"
