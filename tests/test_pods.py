"""Pods of several apps under the real systemd (sdrun.pods): `sdrun pod create`, `sdrun app add`,
apps that share the pod's network and UTS namespaces but not their PIDs, one app stopped or
restarted alone, and nothing left once the pod is removed or a half-made one collected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdrun.pods import NAMESPACES_DIR, slice_unit
from tests.conftest import SDRUN, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd
SERVER = 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 127.0.0.1:8000 -h /www'
# Every 0.1 s: what the server answers on 127.0.0.1, the hostname, the processes this app sees.
CLIENT = (
    "while true; do hostname > /tmp/host; ps > /tmp/ps; "
    "wget -q -O /tmp/got.new http://127.0.0.1:8000/ && mv /tmp/got.new /tmp/got; sleep 0.1; done"
)


@pytest.fixture(autouse=True)
def remove_pods_of_apps(sdrun: Sdrun) -> Iterator[None]:
    """Whatever a test left (it failed half-way), before the sdrun fixture removes the root."""
    yield
    names = sdrun.root / "pod-group-names"
    for link in names.iterdir() if names.exists() else ():
        sdrun("rm", link.name, check=False)


def app_uuid(sdrun: Sdrun, pod: str, app: str) -> str:
    for entry in (sdrun.root / "apps").iterdir():
        manifest = json.loads((entry / "pod.json").read_text())
        if manifest["spec"]["name"] == f"{pod}-{app}":
            return str(manifest["uuid"])
    raise AssertionError(f"no app {app} in pod {pod}")


def app_file(sdrun: Sdrun, pod: str, app: str, path: str) -> Path:
    """A file the app wrote, in its writable layer (a --rootfs pod's stage1/upper)."""
    return sdrun.root / "apps" / app_uuid(sdrun, pod, app) / "stage1" / "upper" / path.lstrip("/")


def unit_state(unit: str) -> str:
    return systemctl_show(unit, "ActiveState")["ActiveState"]


def pod_uuid(sdrun: Sdrun, pod: str) -> str:
    return os.readlink(sdrun.root / "pod-group-names" / pod).rsplit("/", 1)[1]


def host_traces(sdrun: Sdrun, pod: str, uuid: str) -> list[str]:
    """What the host shows of the pod: units, its slice, namespaces, leases, veths."""
    traces = []
    units = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", f"sdrun-{pod}-*", slice_unit(pod)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    traces += [line.split()[0] for line in units.splitlines() if line.strip() and "not-found" not in line]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    traces += [line for line in netns.splitlines() if uuid in line]
    if (NAMESPACES_DIR / uuid).exists():
        traces.append(str(NAMESPACES_DIR / uuid))
    with open("/proc/self/mountinfo") as mounts:
        traces += [line for line in mounts if uuid in line]
    traces += [str(path) for path in (sdrun.root / "net").glob(f"**/{uuid}*")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    traces += [line for line in links.splitlines() if "sdv" + uuid.replace("-", "")[:12] in line]
    return traces


def test_two_apps_share_the_pods_network_and_hostname_not_their_processes(sdrun: Sdrun, rootfs: Path) -> None:
    pod = unique_name("p")
    sdrun("pod", "create", pod, "--hostname", "podhost", "--memory", "256M")
    uuid = pod_uuid(sdrun, pod)
    assert systemctl_show(slice_unit(pod), "ActiveState", "MemoryMax") == {
        "ActiveState": "active",
        "MemoryMax": str(256 << 20),
    }
    sdrun("app", "add", pod, "--rootfs", str(rootfs), "--name", "web", "--", "/bin/sh", "-c", SERVER)
    sdrun(
        "app",
        "add",
        pod,
        "--rootfs",
        str(rootfs),
        "--name",
        "client",
        "--restart",
        "always",
        "--",
        "/bin/sh",
        "-c",
        CLIENT,
    )
    web, client = f"sdrun-{pod}-web.service", f"sdrun-{pod}-client.service"
    assert systemctl_show(web, "Slice")["Slice"] == slice_unit(pod)
    got = app_file(sdrun, pod, "client", "/tmp/got")
    wait_for(got.exists)
    assert got.read_text() == "hello from podhost\n"  # reached on 127.0.0.1; the server's hostname is the pod's
    assert app_file(sdrun, pod, "client", "/tmp/host").read_text() == "podhost\n"
    processes = app_file(sdrun, pod, "client", "/tmp/ps").read_text()
    assert "httpd" not in processes  # the server's processes are not the client's to see
    assert "    1 " in processes and "ps" in processes  # its own PID namespace: its shell is PID 1
    listing = sdrun("app", "list", pod).stdout
    assert f"web\t{web}\tactive" in listing and f"client\t{client}\tactive" in listing

    # Killing the client's main process restarts the client alone (--restart always).
    web_pid = systemctl_show(web, "MainPID")["MainPID"]
    os.kill(int(systemctl_show(client, "MainPID")["MainPID"]), signal.SIGKILL)
    wait_for(lambda: int(systemctl_show(client, "NRestarts")["NRestarts"]) >= 1)
    wait_for(lambda: unit_state(client) == "active")
    assert systemctl_show(web, "MainPID")["MainPID"] == web_pid

    # Stopping the server leaves the client running.
    sdrun("app", "stop", pod, "web")
    assert unit_state(web) == "inactive"
    assert unit_state(client) == "active"
    assert "web\t" in sdrun("app", "list", pod).stdout

    assert sdrun("rm", pod).stdout == f"{pod}\n"
    assert host_traces(sdrun, pod, uuid) == []
    assert list((sdrun.root / "apps").iterdir()) == []
    assert list((sdrun.root / "pod-groups").iterdir()) == []


def test_one_app_run_and_pod_of_apps_side_by_side(sdrun: Sdrun, rootfs: Path) -> None:
    """--net none: the pod's own network namespace, loopback only, held by a file; `app rm`."""
    pod = unique_name("p")
    sdrun("pod", "create", pod, "--net", "none")
    uuid = pod_uuid(sdrun, pod)
    assert (NAMESPACES_DIR / uuid / "net").exists()
    sdrun("app", "add", pod, "--rootfs", str(rootfs), "--name", "web", "--", "/bin/sh", "-c", SERVER)
    sdrun("app", "add", pod, "--rootfs", str(rootfs), "--name", "client", "--", "/bin/sh", "-c", CLIENT)
    got = app_file(sdrun, pod, "client", "/tmp/got")
    wait_for(got.exists)
    assert got.read_text() == f"hello from {pod}\n"  # the pod's name is its hostname by default
    # A one-app run beside it is as it was: its own hostname, its own network.
    alone = sdrun(
        "run",
        "--rm",
        "--net",
        "none",
        "--rootfs",
        str(rootfs),
        "--",
        "/bin/sh",
        "-c",
        "hostname; wget -q -T 1 -O - http://127.0.0.1:8000/ || echo unreachable",
    )
    assert alone.stdout.splitlines()[-1] == "unreachable"
    sdrun("app", "rm", pod, "client")
    assert "client" not in sdrun("app", "list", pod).stdout
    assert unit_state(f"sdrun-{pod}-web.service") == "active"
    sdrun("rm", pod)
    assert host_traces(sdrun, pod, uuid) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("app", "add", "nosuchpod", "--name", "a", "--rootfs", "/"), "no such pod of apps: 'nosuchpod'"),
        (
            ("app", "add", "{pod}", "--name", "web", "--net", "host", "--rootfs", "{rootfs}"),
            "--net is an option of 'sdrun pod create'",
        ),
        (("app", "add", "{pod}", "--name", "web", "--rootfs", "{rootfs}"), "has an app named 'web' already"),
        (("app", "add", "{pod}", "--rootfs", "{rootfs}"), "--name APP is required"),
        (("app", "stop", "{pod}", "nosuchapp"), "has no app 'nosuchapp'"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    sdrun: Sdrun, rootfs: Path, args: tuple[str, ...], message: str
) -> None:
    pod = unique_name("p")
    sdrun("pod", "create", pod, "--net", "none")
    sdrun("app", "add", pod, "--rootfs", str(rootfs), "--name", "web", "--", "/bin/sleep", "1000")
    apps_before = sorted((sdrun.root / "apps").iterdir())
    units_before = sdrun.new_units()
    result = sdrun(*(arg.format(pod=pod, rootfs=rootfs) for arg in args), check=False)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) <= 2 and message in result.stderr.splitlines()[0], result.stderr
    assert sorted((sdrun.root / "apps").iterdir()) == apps_before
    assert sdrun.new_units() == units_before
    sdrun("rm", pod)


def test_pod_create_refuses_an_app_option_and_a_taken_name(sdrun: Sdrun, rootfs: Path) -> None:
    pod = unique_name("p")
    result = sdrun("pod", "create", pod, "--user", "nobody", check=False)
    assert result.returncode != 0
    assert result.stderr == "sdrun: --user is an option of 'sdrun app add', not of 'sdrun pod create'\n"
    assert not (sdrun.root / "pod-group-names" / pod).exists()
    sdrun("pod", "create", pod, "--net", "none")
    again = sdrun("pod", "create", pod, "--net", "none", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    sdrun("rm", pod)
    assert not (sdrun.root / "pod-group-names" / pod).exists()


def test_gc_takes_apart_a_pod_whose_creation_was_cut_short(sdrun: Sdrun, rootfs: Path) -> None:
    """A `pod create` killed after it made everything but its `ready` file (the worst place)."""
    pod = unique_name("p")
    sdrun("pod", "create", pod, "-p", "18080:80")
    uuid = pod_uuid(sdrun, pod)
    sdrun("app", "add", pod, "--rootfs", str(rootfs), "--name", "web", "--", "/bin/sleep", "1000")
    (sdrun.root / "pod-groups" / uuid / "ready").unlink()
    assert host_traces(sdrun, pod, uuid) != []
    removed = sdrun("gc").stdout
    assert f"half-made pod {pod}" in removed
    assert host_traces(sdrun, pod, uuid) == []
    assert list((sdrun.root / "apps").iterdir()) == []


def host_state(pod: str) -> dict[str, list[str]]:
    """What the host shows of any pod: named network namespaces, veths, namespace-file mounts, the
    pod's slice and app units."""

    def lines(*command: str) -> list[str]:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()

    with open("/proc/self/mountinfo") as mounts:
        held = sorted(line.split()[4] for line in mounts if str(NAMESPACES_DIR) + "/" in line)
    units = lines("systemctl", "list-units", "--all", "--plain", "--no-legend", f"sdrun-{pod}-*", slice_unit(pod))
    return {
        "netns": sorted(lines("ip", "netns", "list")),
        "veths": sorted(line.split(":")[1] for line in lines("ip", "-o", "link") if " sdv" in line),
        "mounts": held,
        "units": sorted(line.split()[0] for line in units if line.strip()),
    }


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6])
def test_kill_9_of_pod_create_or_app_add_leaves_nothing_after_gc(sdrun: Sdrun, rootfs: Path, delay: float) -> None:
    """Wherever `pod create` (on the default network, a port published) and then `app add` are
    killed, `sdrun gc` leaves the host as it was."""
    import time

    pod = unique_name("p")
    before = host_state(pod)
    for command in (
        ["pod", "create", pod, "-p", "18081:80"],
        [
            "app",
            "add",
            pod,
            "--rootfs",
            str(rootfs),
            "--name",
            "web",
            "--restart",
            "always",
            "--",
            "/bin/sleep",
            "1000",
        ],
    ):
        if command[0] == "app":  # a whole pod to add the app to
            sdrun("gc")
            sdrun("pod", "create", pod, "-p", "18081:80")
        process = subprocess.Popen([SDRUN, "--root", str(sdrun.root), *command], stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait(timeout=30)
        sdrun("gc")
        if (sdrun.root / "app-names" / f"{pod}-web").is_symlink():  # made whole before the kill: gc keeps it
            sdrun("app", "rm", pod, "web")
        assert [entry.name for entry in (sdrun.root / "apps").glob("*")] == []  # a half-made app is gc's
        assert not [unit for unit in host_state(pod)["units"] if unit.endswith(".service")]
        if command[0] == "app":  # the pod itself was whole: it stays until removed
            assert sdrun("app", "list", pod).stdout == "APP\tUNIT\tSTATE\n"
        if (sdrun.root / "pod-group-names" / pod).is_symlink():  # made whole before the kill: gc keeps it
            sdrun("rm", pod)
        assert host_state(pod) == before
        assert [entry.name for entry in (sdrun.root / "pod-groups").glob("*")] == []
