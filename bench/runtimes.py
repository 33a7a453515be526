"""The runtimes compared: sdrun's stage1s and the peers, all run on the same busybox rootfs.

Each runtime says how to run /bin/true once (start, wait, clean up), how to
start SLEEP_ARGV in the background and how to remove it again. Flags beyond
the plain command are there to make the runtimes comparable or to let them
run side by side, and each is explained where it is set.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.core import Bench, progress, run_command

SLEEP_ARGV = ("/bin/sleep", "86400")  # the app of running containers: recognisable by its argv

Argv = list[str]


@dataclass(frozen=True)
class Runtime:
    name: str
    executable: str  # looked up on PATH: a runtime without it is left out
    package: str  # Debian package, for the versions in the report
    oneshot: Callable[[Bench, str], Argv]  # /bin/true: start, wait for it, clean up
    detached: Callable[[Bench, str], Argv]  # start SLEEP_ARGV and return...
    remove: Callable[[Bench, str], list[Argv]]  # ...and remove it again
    foreground: bool = False  # `detached` does not return: its process keeps the container
    is_sdrun: bool = False


def _sdrun(stage1: str, *flags: str, label: str = "") -> Runtime:
    def oneshot(bench: Bench, name: str) -> Argv:
        return [
            *bench.sdrun,
            "run",
            "--rm",
            "--stage1",
            stage1,
            *flags,
            "--rootfs",
            str(bench.rootfs),
            "--",
            "/bin/true",
        ]

    def detached(bench: Bench, name: str) -> Argv:
        rootfs = str(bench.rootfs)
        return [
            *bench.sdrun,
            "run",
            "-d",
            "--stage1",
            stage1,
            *flags,
            "--name",
            name,
            "--rootfs",
            rootfs,
            "--",
            *SLEEP_ARGV,
        ]

    def remove(bench: Bench, name: str) -> list[Argv]:
        return [[*bench.sdrun, "rm", "-f", name]]

    return Runtime(label or f"sdrun {stage1}", "systemctl", "sdrun", oneshot, detached, remove, is_sdrun=True)


def _systemd_run() -> Runtime:
    # The floor for anything that goes through systemd: a transient service, no container setup.
    def oneshot(bench: Bench, name: str) -> Argv:
        return ["systemd-run", "--wait", "-q", "-p", f"RootDirectory={bench.rootfs}", "/bin/true"]

    def detached(bench: Bench, name: str) -> Argv:
        return ["systemd-run", "-q", "--unit", name, "-p", f"RootDirectory={bench.rootfs}", *SLEEP_ARGV]

    return Runtime(
        "systemd-run", "systemd-run", "systemd", oneshot, detached, lambda bench, name: [["systemctl", "stop", name]]
    )


def _nspawn() -> Runtime:
    # A machine name of its own and --read-only (a shared rather than an exclusive lock on the
    # directory) let several run side by side on one rootfs; --register=no: no machined here.
    def command(bench: Bench, name: str, argv: tuple[str, ...]) -> Argv:
        return ["systemd-nspawn", "-q", "--register=no", "-M", name, "--read-only", "-D", str(bench.rootfs), *argv]

    return Runtime(
        "systemd-nspawn",
        "systemd-nspawn",
        "systemd-container",
        lambda bench, name: command(bench, name, ("/bin/true",)),
        lambda bench, name: command(bench, name, SLEEP_ARGV),
        lambda bench, name: [],
        foreground=True,
    )


def _podman(network: str = "none", label: str = "podman") -> Runtime:
    def command(bench: Bench, name: str, mode: str, argv: tuple[str, ...]) -> Argv:
        return ["podman", "run", mode, "--network", network, "--name", name, "--rootfs", str(bench.rootfs), *argv]

    return Runtime(
        label,
        "podman",
        "podman",
        lambda bench, name: command(bench, name, "--rm", ("/bin/true",)),
        lambda bench, name: command(bench, name, "-d", SLEEP_ARGV),
        lambda bench, name: [["podman", "rm", "-f", "-t", "0", name]],
    )


def _oci(executable: str, global_flags: tuple[str, ...] = ()) -> Runtime:
    """crun or runc on an OCI bundle made by `crun spec`: see make_bundles."""

    def oneshot(bench: Bench, name: str) -> Argv:
        return [executable, *global_flags, "run", "--bundle", str(bench.scratch / "oci-true"), name]

    def detached(bench: Bench, name: str) -> Argv:
        return [executable, *global_flags, "run", "-d", "--bundle", str(bench.scratch / "oci-sleep"), name]

    def remove(bench: Bench, name: str) -> list[Argv]:
        return [[executable, *global_flags, "delete", "-f", name]]

    return Runtime(executable, executable, executable, oneshot, detached, remove)


def _bwrap() -> Runtime:
    def command(bench: Bench, argv: tuple[str, ...]) -> Argv:
        rootfs = str(bench.rootfs)
        isolation = ["--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]
        return ["bwrap", "--ro-bind", rootfs, "/", *isolation, *argv]

    return Runtime(
        "bwrap",
        "bwrap",
        "bubblewrap",
        lambda bench, name: command(bench, ("/bin/true",)),
        lambda bench, name: command(bench, SLEEP_ARGV),
        lambda bench, name: [],
        foreground=True,
    )


# crun 1.8 refuses cgroupfs when the unified hierarchy of a hybrid setup holds a controller,
# so it uses systemd's cgroup manager here, as podman does (and as sdrun does by design).
# Without a network: the peers' containers here have none either (crun's default spec gives a
# namespace with loopback only; podman gets --network none). bench/network.py compares networks.
ALL_RUNTIMES: tuple[Runtime, ...] = (
    _sdrun("fly"),
    _sdrun("namespace", "--net", "none"),
    _systemd_run(),
    _nspawn(),
    _podman(),
    _oci("crun", ("--cgroup-manager=systemd",)),
    _oci("runc"),
    _bwrap(),
)


def make_bundles(bench: Bench) -> None:
    """Two OCI bundles from `crun spec`: /bin/true and SLEEP_ARGV, on the shared rootfs (read-only,
    as every runtime here gets it), no terminal. The default spec already gives the container its
    own PID, network, IPC, UTS and mount namespaces."""
    for name, argv in (("oci-true", ("/bin/true",)), ("oci-sleep", SLEEP_ARGV)):
        bundle = bench.scratch / name
        bundle.mkdir()
        run_command(["crun", "spec", "--bundle", str(bundle)])
        config_path = bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = list(argv)
        config["root"] = {"path": str(bench.rootfs), "readonly": True}
        config_path.write_text(json.dumps(config, indent=2))


def available(candidates: tuple[Runtime, ...] = ALL_RUNTIMES) -> tuple[list[Runtime], dict[str, str]]:
    found, missing = [], {}
    for runtime in candidates:
        if shutil.which(runtime.executable):
            found.append(runtime)
        else:
            missing[runtime.name] = f"{runtime.executable} is not installed (Debian package {runtime.package})"
    return found, missing


def version_of(runtime: Runtime, project: Path) -> str:
    if runtime.is_sdrun:
        try:
            return (
                "git "
                + run_command(["git", "-C", str(project), "describe", "--always", "--dirty"], capture=True).strip()
            )
        except Exception:  # noqa: BLE001 - a version is nice to have, never worth failing for
            return "unknown"
    try:
        return run_command(["dpkg-query", "-W", "-f", "${Version}", runtime.package], capture=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def hide_hybrid_unified_cgroup() -> str | None:
    """crun (and podman through it) refuses a hybrid cgroup setup whose cgroup2 hierarchy holds a
    controller (here hugetlb, which no v1 hierarchy mounts). In a mount namespace of the benchmark's
    own, detach /sys/fs/cgroup/unified: the runtimes started from here then see pure cgroup v1.
    systemd, sdrun's stage1s and systemd-run are unaffected: they run in systemd's namespace."""
    unified = Path("/sys/fs/cgroup/unified")
    controllers = unified / "cgroup.controllers"
    held = controllers.read_text().split() if controllers.exists() else []
    if not held:
        return None
    from sdrun.linux import syscalls as sc

    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # keep seeing the host's mounts, show it none of ours
    sc.umount2(unified, sc.MNT_DETACH)
    progress(f"hid {unified}: it holds {' '.join(held)}")
    return (
        "Hybrid cgroups: the cgroup2 hierarchy holds a controller, which crun 1.8 refuses; the benchmark runs "
        "in a mount namespace of its own without /sys/fs/cgroup/unified (systemd and its units still see it); "
        "sdrun's commands run in systemd's (`nsenter --mount`, ~1 ms), where `sdrun run` sets a pod's network up."
    )


def private_podman_storage(scratch: Path) -> str:
    """podman's storage under the benchmark's scratch directory, through CONTAINERS_STORAGE_CONF
    (which every podman command started from here inherits): the throwaway systemd's root is an
    overlayfs, which podman's overlay driver cannot stack on, and the host's store is none of ours."""
    config = scratch / "podman-storage.conf"
    config.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{scratch}/podman/storage"\nrunroot = "{scratch}/podman/run"\n'
    )
    os.environ["CONTAINERS_STORAGE_CONF"] = str(config)
    return f"podman keeps its storage in the benchmark's scratch directory ({config})."


def in_throwaway_systemd() -> bool:
    try:
        return b"container=sdrun-harness" in Path("/proc/1/environ").read_bytes()
    except OSError:
        return False


def cpu_count() -> int:
    return os.cpu_count() or 1


def oneshot_command(bench: Bench, runtime: Runtime) -> Callable[[], Argv]:
    """A maker of one-shot commands, each with a fresh container name."""
    return lambda: runtime.oneshot(bench, bench.unique())


# The network case: the same start, on each runtime's bridge network and without one.
NETWORK_RUNTIMES: tuple[Runtime, ...] = (
    _sdrun("namespace", "--net", "none", label="sdrun namespace --net none"),
    _sdrun("namespace", "--net", "default", label="sdrun namespace --net default"),
    _podman("none", label="podman --network none"),
    _podman("bridge", label="podman --network bridge"),
)
