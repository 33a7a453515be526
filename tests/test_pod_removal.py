"""Removing a pod is crash-safe, and gc deletes whatever an interrupted removal left (issue 17).

A removal that stops half-way must leave either the whole pod or a directory
that `gc` deletes: never a `pods/<uuid>/` without its manifest, which nothing
would ever collect."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import SDRUN, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd
APP = ("--", "sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait")


def pod_dir(sdrun: Sdrun, name: str) -> Path:
    return (sdrun.root / "names" / name).resolve()


def test_gc_deletes_a_pod_directory_that_lost_its_manifest(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("rm")
    sdrun("run", "--name", name, "--net", "none", "--rootfs", str(rootfs), "--", "true")
    directory = pod_dir(sdrun, name)
    (directory / "pod.json").unlink()  # what a removal interrupted after the manifest went left
    assert name not in sdrun("list").stdout

    assert f"removed {directory}" in sdrun("gc").stdout
    assert not directory.exists()
    assert not sdrun.pods() and not sdrun.names()


def test_gc_leaves_a_directory_without_manifest_alone_while_its_pod_has_a_unit(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("rm")
    sdrun("run", "-d", "--name", name, "--net", "none", "--rootfs", str(rootfs), *APP)
    directory = pod_dir(sdrun, name)
    (directory / "pod.json").unlink()
    sdrun("gc")
    assert directory.is_dir()  # its unit runs from it

    subprocess.run(["systemctl", "stop", f"sdrun-{name}.service"], check=True, timeout=60)
    assert f"removed {directory}" in sdrun("gc").stdout
    assert not directory.exists()


def test_gc_deletes_a_half_removed_directory_once_nobody_holds_its_lock(sdrun: Sdrun) -> None:
    trash = sdrun.root / "pods" / ".removing-0123abcd-0000-4000-8000-000000000000.cafe"
    (trash / "stage1").mkdir(parents=True)
    lock = os.open(trash / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # its remover is at work
        sdrun("gc")
        assert trash.is_dir()
    finally:
        os.close(lock)
    assert sdrun("gc").stdout == f"removed {trash}\n"
    assert not trash.exists()


def test_rm_killed_half_way_leaves_nothing_gc_does_not_delete(sdrun: Sdrun, rootfs: Path) -> None:
    """`sdrun rm` killed while it deletes the pod's files: the pod is gone at once, its name free,
    and gc deletes the rest."""
    name = unique_name("rm")
    sdrun("run", "--name", name, "--net", "none", "--rootfs", str(rootfs), "--", "true")
    directory = pod_dir(sdrun, name)
    many = directory / "many"
    many.mkdir()
    for index in range(40_000):  # enough that deleting them takes a while
        (many / str(index)).touch()

    remover = subprocess.Popen([SDRUN, "--root", str(sdrun.root), "rm", name], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (trash := [path for path in (sdrun.root / "pods").iterdir() if path.name.startswith(".removing-")]):
        assert remover.poll() is None, "sdrun rm ended before its pod's directory was seen on its way out"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    remover.send_signal(signal.SIGKILL)
    assert remover.wait(timeout=30) == -signal.SIGKILL

    assert not directory.exists()
    assert name not in sdrun("list").stdout
    assert sdrun("gc").stdout == f"removed {trash[0]}\n"
    assert not sdrun.pods() and not sdrun.names()
    sdrun("run", "--rm", "--name", name, "--net", "none", "--rootfs", str(rootfs), "--", "true")  # its name is free


def test_a_pod_removed_while_it_ran_is_gone_whole(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("rm")
    sdrun("run", "-d", "--name", name, "--net", "none", "--rootfs", str(rootfs), *APP)
    sdrun("rm", "-f", name)
    wait_for(lambda: systemctl_show(f"sdrun-{name}.service", "LoadState")["LoadState"] == "not-found")
    assert not sdrun.pods() and not sdrun.names()
