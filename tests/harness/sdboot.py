"""Run a command under a real systemd, booting a throwaway one when the host has none.

On a host where systemd is PID 1 the command simply runs. Otherwise this boots
systemd as PID 1 of new cgroup+pid+mount+network namespaces:

* the booting process first moves into a fresh sub-cgroup of every mounted v1
  hierarchy (cpuset excepted: a new cpuset group has no CPUs), so the throwaway
  systemd's cgroups stay nested under ours and we never leave our own cgroup;
* its root is an overlay of `/` with a tmpfs upper, so nothing it writes lands
  on the host, except the project directory, which is bound in read-write;
* the cgroup hierarchies are remounted inside the cgroup namespace, so systemd
  sees our sub-cgroup as its root and manages real controllers under it;
* a network namespace of its own (loopback only) keeps the bridges, veths, nft
  tables and sysctls that tests create off the host, and lets two test runs
  on one machine each have their `sdrun0`.

The command then runs inside its mount, PID, cgroup and network namespaces
(scopes can only be created from there), and systemd is powered off afterwards.

Usage: python -m tests.harness.sdboot [--shell] -- CMD [ARGS...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdrun.linux import syscalls as sc

PROJECT = Path(__file__).resolve().parents[2]
SYSTEMD = "/lib/systemd/systemd"
SKIPPED_CONTROLLERS = {"cpuset"}
# Directories that get a fresh tmpfs in the guest: sdrun's state must sit on a
# real filesystem, because overlayfs cannot use an overlayfs as its upper dir.
GUEST_TMPFS = ("/var/lib/sdrun", "/var/tmp")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup v1 hierarchy, e.g. memory or name=systemd."""

    mountpoint: Path
    options: str  # the superblock options that name its controllers
    own_path: str  # our cgroup inside it, from /proc/self/cgroup

    @property
    def name(self) -> str:
        return self.mountpoint.name

    def subgroup(self, leaf: str) -> Path:
        return self.mountpoint / self.own_path.lstrip("/") / leaf


def host_runs_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and Path("/proc/1/comm").read_text().strip() == "systemd"


def cgroup_hierarchies() -> list[Hierarchy]:
    own: dict[frozenset[str], str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:
            own[frozenset(controllers.split(","))] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, superopts = fields[separator + 1], fields[separator + 3]
        if fstype != "cgroup":
            continue
        names = {opt for opt in superopts.split(",") if opt not in ("rw", "ro")}
        key = frozenset(names)
        if key in own and not names & SKIPPED_CONTROLLERS:
            found.append(Hierarchy(Path(fields[4]), ",".join(sorted(names)), own[key]))
    return found


class ThrowawaySystemd:
    def __init__(self, hierarchies: list[Hierarchy]) -> None:
        self.hierarchies = hierarchies
        self.leaf = f"sdrun-harness-{os.getpid()}"
        self.launcher = 0  # our child; it waits for PID 1 and exits with it
        self.pid1 = 0  # systemd, as seen from the host

    def boot(self) -> None:
        for hierarchy in self.hierarchies:
            hierarchy.subgroup(self.leaf).mkdir()
        report_r, report_w = os.pipe()
        self.launcher = os.fork()
        if self.launcher == 0:
            os.close(report_r)
            self._launch(report_w)
        os.close(report_w)
        with os.fdopen(report_r) as report:
            answer = report.read().strip()
        if not answer.isdigit():
            raise RuntimeError(f"could not boot systemd: {answer or 'launcher died'}")
        self.pid1 = int(answer)
        self._wait_until_running()

    def _launch(self, report_w: int) -> None:
        """In the forked launcher: enter the sub-cgroups and namespaces, fork PID 1."""
        try:
            for hierarchy in self.hierarchies:
                (hierarchy.subgroup(self.leaf) / "cgroup.procs").write_text("0")
            sc.unshare(sc.CLONE_NEWNET)
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # before CLONE_NEWPID: its child is PID 1
            sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP)
            pid1 = os.fork()
            if pid1 == 0:
                self._become_systemd(report_w)
            os.write(report_w, f"{pid1}\n".encode())
            os.close(report_w)
            _, status = os.waitpid(pid1, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        except BaseException as error:  # noqa: BLE001 - reported to the parent, then exit
            os.write(report_w, f"{error}\n".encode())
            os._exit(1)

    def _become_systemd(self, report_w: int) -> None:
        try:
            self._build_root()
            os.close(report_w)
            devnull = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            env = {"container": "sdrun-harness", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            args = [SYSTEMD, "--unit=basic.target", "--show-status=no", "--log-target=journal"]
            os.execve(SYSTEMD, args, env)
        except BaseException as error:  # noqa: BLE001
            os.write(report_w, f"{error}\n".encode())
            os._exit(1)

    def _build_root(self) -> None:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("sdrun-harness", "/mnt", "tmpfs", 0, "mode=0755")
        for sub in ("upper", "work", "root"):
            os.mkdir(f"/mnt/{sub}")
        root = Path("/mnt/root")
        sc.mount("overlay", root, "overlay", 0, "lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work")
        sc.mount("proc", root / "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        sc.mount("/dev", root / "dev", None, sc.MS_BIND | sc.MS_REC)
        # Read-only, as systemd-nspawn does: it keeps udev (ConditionPathIsReadWrite=/sys) from
        # starting in the guest and acting on the host's devices.
        sc.mount("sysfs", root / "sys", "sysfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        cgroup_root = root / "sys/fs/cgroup"
        sc.mount("tmpfs", cgroup_root, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=0755")
        for hierarchy in self.hierarchies:
            target = cgroup_root / hierarchy.name
            target.mkdir()
            sc.mount("cgroup", target, "cgroup", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, hierarchy.options)
        for directory in GUEST_TMPFS:
            (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
            sc.mount("tmpfs", root / directory.lstrip("/"), "tmpfs", 0, "mode=0755")
        sc.mount(PROJECT, root / str(PROJECT).lstrip("/"), None, sc.MS_BIND | sc.MS_REC)
        os.mkdir(root / ".oldroot")
        sc.pivot_root(root, root / ".oldroot")
        os.chdir("/")
        sc.umount2("/.oldroot", sc.MNT_DETACH)
        os.rmdir("/.oldroot")

    def _wait_until_running(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        bus = Path(f"/proc/{self.pid1}/root/run/dbus/system_bus_socket")
        while not bus.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("systemd booted but its system bus never appeared")
            time.sleep(0.05)
        self.run(["systemctl", "is-system-running", "--wait", "--quiet"], check_exit=False)

    def command(self, argv: list[str]) -> list[str]:
        """argv, wrapped to run inside the guest's namespaces, in the project directory."""
        enter = ["nsenter", f"--target={self.pid1}", "--mount", "--pid", "--cgroup", "--net", "--root", "--wd"]
        return [*enter, "/bin/sh", "-c", 'cd "$0" && exec "$@"', str(PROJECT), *argv]

    def run(self, argv: list[str], check_exit: bool = True) -> int:
        code = subprocess.call(self.command(argv))
        if check_exit and code < 0:
            return 128 - code
        return code

    def shutdown(self, timeout: float = 30.0) -> None:
        if self.launcher:
            if self.pid1:
                os.kill(self.pid1, signal.SIGRTMIN + 4)  # poweroff, as in `systemctl poweroff`
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if os.waitpid(self.launcher, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)
            else:
                os.kill(self.pid1, signal.SIGKILL)  # takes the whole PID namespace with it
                os.waitpid(self.launcher, 0)
        for hierarchy in self.hierarchies:
            remove_cgroup_tree(hierarchy.subgroup(self.leaf))


def remove_cgroup_tree(top: Path) -> None:
    """rmdir a cgroup and everything systemd created beneath it, deepest first."""
    if not top.exists():
        return
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: entry[0].count("/"), reverse=True):
        for _attempt in range(50):
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)  # the last tasks are still exiting


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force-boot", action="store_true", help="boot a throwaway systemd even if PID 1 is one")
    parser.add_argument("argv", nargs="+", help="the command to run")
    args = parser.parse_args()
    if host_runs_systemd() and not args.force_boot:
        return subprocess.call(args.argv)
    if os.geteuid() != 0:
        print("sdboot: booting a throwaway systemd needs root", file=sys.stderr)
        return 1
    if shutil.which("nsenter") is None:
        print("sdboot: nsenter (util-linux) is missing", file=sys.stderr)
        return 1
    guest = ThrowawaySystemd(cgroup_hierarchies())
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the command gets them; we still clean up
    try:
        guest.boot()
        return guest.run(args.argv)
    finally:
        guest.shutdown()


if __name__ == "__main__":
    sys.exit(main())
