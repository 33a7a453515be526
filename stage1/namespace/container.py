"""What a namespace container looks like, as data: its root, its mounts, its identity, its confinement.

Nothing here touches the system: `container_plan(pod)` reads the pod's spec and
returns a ContainerPlan; stage1.namespace.entry carries it out. The defaults
follow runc's and Docker's (masked and read-only /proc paths, a minimal /dev,
podman's eleven capabilities, a seccomp allowlist), each overridable from the spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from sdrun.errors import SpecError
from sdrun.linux import caps
from sdrun.linux import syscalls as sc
from sdrun.linux.mounts import (
    BindMount,
    FilesystemMount,
    MaskPath,
    MountOperation,
    ReadOnlyPath,
    ReadOnlyRoot,
    Symlink,
)
from sdrun.net import NETNS_DIR, netns_name
from sdrun.paths import Paths
from sdrun.spec import PodSpec
from stage1 import INTERFACE_VERSION
from stage1.etcfiles import etc_mounts, pod_hostname
from stage1.namespace.entry import INIT_PATH, PLAN_FILE
from stage1.rootfs import UPPER, WORK, image_lowers, overlay_options, read_only_tmpfs

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from stage1.app import ResolvedApp
    from stage1.namespace.entry import Plan

# Under /proc and /sys, what a container must not read (kernel memory, timers of the
# host) or write (sysctls, sysrq). runc's and Docker's lists (Docker's /proc/interrupts and
# the CPUs' thermal_throttle among them, below), and what tells an attacker about the host's
# kernel heap and build (slab, vmalloc and page-type statistics, the kernel's config, the
# crash dump's symbol offsets), which a container's root could otherwise read.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/config.gz",
    "/proc/vmallocinfo",
    "/proc/slabinfo",
    "/proc/pagetypeinfo",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel/vmcoreinfo",
)
CPUS = "/sys/devices/system/cpu"
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# The host's device nodes a container gets, bound in (mknod would not work in a user namespace).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
)
# systemd's DevicePolicy=closed already allows null, zero, full, random and urandom.
DEVICE_ALLOW = (("/dev/tty", "rw"), ("/dev/ptmx", "rw"), ("char-pts", "rw"))
TINI = "/usr/bin/tini-static"
API_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
USERNS_RANGE = 0x10000  # one 64K range per pod, as systemd-nspawn's --private-users=pick
USERNS_FIRST_BASE = 0x80000  # leave the first 512K ids to the host, as nspawn does
USERNS_BASES = 0x6FFF  # bases to pick from: up to 0x6FFF0000 + 0x80000


class UserNamespace(NamedTuple):
    base: int  # the host uid (and gid) that root in the container is
    size: int  # how many ids, from base

    @property
    def map(self) -> str:
        return f"0 {self.base} {self.size}\n"


class ContainerPlan(NamedTuple):
    """Relative paths are relative to the pod's stage1 directory, the entry's working directory:
    a container root in a user namespace could not traverse the pod directory (0700) above it."""

    directory: str  # the pod's stage1 directory
    root: str  # where the rootfs is mounted in the entry's mount namespace
    lowers: tuple[tuple[str, str], ...]  # (directory, where): trees bound first (idmapped under --private-users)
    volume_trees: tuple[tuple[str, str, bool], ...]  # (source, where, idmapped): volumes bound by the entry
    overlay: str  # the root's overlayfs options
    hostname: str
    mounts: tuple[MountOperation, ...]  # what builds the container's tree...
    lockdown: tuple[MountOperation, ...]  # ... and then what masks and write-protects it
    capabilities: frozenset[str]
    seccomp_filter: str | None  # compiled BPF, None = unconfined
    user_namespace: UserNamespace | None
    host_network: bool
    netns: str  # the named network namespace to join, if networking made it
    init: bool
    notify: bool  # the app says READY=1 itself, through systemd's socket bound into the container
    payload_cgroup: bool  # run the container in a child cgroup of the unit's (sdrun.linux.cgroups)
    sysctls: tuple[tuple[str, str], ...] = ()  # (key, value): --sysctl, for the pod's own namespaces
    joins: tuple[tuple[str, int], ...] = ()  # (namespace file, CLONE_NEW*): an app's pod's IPC and UTS (sdrun.pods)

    def entry_plan(self, app: ResolvedApp, *, terminal: bool = False) -> Plan:
        """What the in-unit entry carries out (stage1.namespace.entry), as plain values."""
        userns = self.user_namespace
        return {
            "interface": INTERFACE_VERSION,
            "directory": self.directory,
            "root": self.root,
            "lowers": list(self.lowers),
            "volumes": list(self.volume_trees),
            "overlay": self.overlay,
            "hostname": self.hostname,
            "mounts": [operation.to_plan() for operation in self.mounts],
            "lockdown": [operation.to_plan() for operation in self.lockdown],
            "capabilities": caps.mask(self.capabilities),
            "seccomp": self.seccomp_filter,
            "userns": None if userns is None else (userns.base, userns.size),
            "host_network": self.host_network,
            "netns": self.netns,
            "init": self.init,
            "notify": self.notify,
            "payload_cgroup": self.payload_cgroup,
            "sysctl": list(self.sysctls),
            "join": list(self.joins),
            "terminal": terminal,
            "app": app.plan_fields(),
        }


def stage1_dir(pod: Pod) -> Path:
    return Paths.stage1_dir(pod.dir)


def plan_file(pod: Pod) -> Path:
    """What stage0 planned for the entry (and for `enter`): entry.PLAN_FILE in the stage1 directory."""
    return stage1_dir(pod) / PLAN_FILE


def seccomp_filter_path(pod: Pod) -> Path:
    return stage1_dir(pod) / "seccomp.bpf"


def capabilities_of(spec: PodSpec) -> frozenset[str]:
    return caps.resolve(spec.isolation.cap_add, spec.isolation.cap_drop)


def may_mount_cgroups(spec: PodSpec) -> bool:
    """Whether the pod could mount a cgroup filesystem and write to the cgroup at its root there:
    with SYS_ADMIN, or with a seccomp profile other than sdrun's, which may let it make a user
    namespace of its own (and cgroup and mount namespaces in that)."""
    return "SYS_ADMIN" in capabilities_of(spec) or spec.isolation.seccomp != "default"


def auto_range_base(pod_uuid: str) -> int:
    """The first host uid of the 64K range --private-users=auto gives a pod: derived from its
    UUID, so stable across restarts of the same pod."""
    import hashlib

    index = int(hashlib.sha256(pod_uuid.encode()).hexdigest(), 16) % USERNS_BASES
    return USERNS_FIRST_BASE + index * USERNS_RANGE


def user_namespace_of(pod: Pod) -> UserNamespace | None:
    choice = pod.spec.isolation.private_users
    if choice is None:
        return None
    if choice == "auto":
        return UserNamespace(auto_range_base(pod.uuid), USERNS_RANGE)
    base, _, count = choice.partition(":")
    if int(base) == 0:
        raise SpecError("--private-users: the range must not start at host uid 0", hint="e.g. 100000:65536")
    return UserNamespace(int(base), int(count))


def sysctl_settings(spec: PodSpec) -> tuple[tuple[str, str], ...]:
    """--sysctl KEY=VALUE as (key, value), checked when the spec was read (sdrun.spec.parse_sysctl);
    a key this kernel does not have is refused here, rather than by the entry inside the unit (but
    one of an interface, net.ipv4.conf.eth0.*: the pod's eth0 is not the host's)."""
    settings = tuple((key, value) for key, _, value in (text.partition("=") for text in spec.isolation.sysctl))
    for key, _ in settings:
        of_an_interface = key.split(".")[2:3] in (["conf"], ["neigh"])
        if not (of_an_interface or os.path.exists(sysctl_path(key))):
            raise SpecError(f"--sysctl {key}: this kernel has no such sysctl")
    return settings


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def parse_tmpfs(text: str) -> FilesystemMount:
    """--tmpfs PATH[:OPTIONS]: nosuid,nodev,noexec unless told otherwise (as Docker)."""
    path, _, options = text.partition(":")
    words = [word for word in options.split(",") if word]
    flags = {"ro": sc.MS_RDONLY, "nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC}
    relaxed = {"rw": 0, "suid": sc.MS_NOSUID, "dev": sc.MS_NODEV, "exec": sc.MS_NOEXEC}
    mask = API_FLAGS
    data = []
    for word in words:
        if word in flags:
            mask |= flags[word]
        elif word in relaxed:
            mask &= ~relaxed[word]
        else:
            data.append(word)
    return FilesystemMount("tmpfs", path, mask, ",".join(data) or "mode=1777")


def thermal_throttle_paths() -> list[str]:
    """Each CPU's thermal_throttle directory the host has, masked as Docker does (the host's
    counters); listed here in stage0, not by the entry."""
    try:
        names = os.listdir(CPUS)
    except FileNotFoundError:
        return []
    paths = [f"{CPUS}/{name}/thermal_throttle" for name in names if name[3:].isdigit() and name.startswith("cpu")]
    return sorted(path for path in paths if os.path.isdir(path))


def device_mounts(spec: PodSpec) -> list[MountOperation]:
    """--device HOST:CONTAINER:PERMS: the host's node bound in, as DEVICES are; the unit's DeviceAllow=
    (backend.device_properties) lets the app open it, as PERMS say."""
    return [BindMount(host, target) for host, target, _ in (text.split(":") for text in spec.isolation.device)]


def volume_mounts(
    spec: PodSpec, user_namespace: UserNamespace | None
) -> tuple[list[MountOperation], list[tuple[str, str, bool]]]:
    """The volumes' mounts, and the trees the entry binds first. In a user namespace the entry binds
    each source (as host root: the container's root could not even reach a source under a 0700
    directory) at a place of the stage1 directory, and the container init binds that onto the target.
    The host's ids show as they map (host root's files are nobody's, and not the container root's to
    write) unless the volume asks for :idmap: then it is bound through the pod's id map, as the rootfs
    is, so that a host file of uid N shows as the container's uid N, and what the container's root
    writes is host root's (the user namespace protects nothing in it: opt-in, as podman's)."""
    if user_namespace is None:
        return [BindMount(volume.source, volume.target, volume.read_only) for volume in spec.app.volumes], []
    mounts: list[MountOperation] = []
    trees = []
    for index, volume in enumerate(spec.app.volumes):
        trees.append((volume.source, f"volume{index}", volume.idmap))
        mounts.append(BindMount(f"volume{index}", volume.target, volume.read_only))
    return mounts, trees


def api_mounts(pod: Pod, user_namespace: UserNamespace | None, console: str | None) -> list[MountOperation]:
    """/proc, /sys and a minimal /dev; the caller mounts them in the container's PID namespace."""
    sysfs: MountOperation = FilesystemMount("sysfs", "/sys", API_FLAGS | sc.MS_RDONLY)
    if user_namespace is not None and pod.spec.net != "none":
        # sysfs may only be mounted by the owner of the network namespace, and the host's namespace or
        # one that sdrun.net made before the stage1 ran is not the pod's: show the host's, read-only.
        sysfs = BindMount("/sys", "/sys", read_only=True)
    mounts: list[MountOperation] = [
        FilesystemMount("proc", "/proc", API_FLAGS),
        sysfs,
        FilesystemMount("tmpfs", "/dev", sc.MS_NOSUID, "mode=755,size=65536k"),
        *(BindMount(f"/dev/{device}", f"/dev/{device}") for device in DEVICES),
        FilesystemMount("devpts", "/dev/pts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        *(Symlink(link, target) for link, target in DEV_LINKS),
        FilesystemMount("tmpfs", "/dev/shm", API_FLAGS, "mode=1777,size=65536k"),
        FilesystemMount("mqueue", "/dev/mqueue", API_FLAGS),
    ]
    if console is not None:
        mounts.append(BindMount(console, "/dev/console"))
    return mounts


def root_mount(pod: Pod, user_namespace: UserNamespace | None) -> tuple[tuple[tuple[str, str], ...], str]:
    """The trees to bind before the root is mounted, and the root's overlay options. A --rootfs
    directory is shared by every pod that runs it, an image's layer trees by every pod of the
    image: each pod writes to an upper layer of its own, where the mount points of its volumes and
    /etc files are made too, before --read-only makes the root read-only (ReadOnlyRoot). In a user
    namespace each tree is bound idmapped, so that its files owned by root show as the container's
    root; without one, the overlay takes the layer trees as they are, and saves the binds."""
    scratch = stage1_dir(pod)
    if pod.spec.rootfs is None:
        layers = image_lowers(pod)
        if user_namespace is not None:
            lowers = tuple((layer, f"lower{index}") for index, layer in enumerate(layers))
            layers = [where for _, where in lowers]
        else:
            lowers = ()
        return lowers, overlay_options(layers, str(scratch / UPPER), str(scratch / WORK))
    return ((pod.spec.rootfs, "lower"),), overlay_options(["lower"], str(scratch / "upper"), str(scratch / "work"))


def container_plan(pod: Pod, console: str | None = None) -> ContainerPlan:
    """console: the terminal to show as /dev/console (a --scope run's), if any."""
    spec = pod.spec
    isolation = spec.isolation
    user_namespace = user_namespace_of(pod)
    mounts = api_mounts(pod, user_namespace, console)
    mounts += device_mounts(spec)
    mounts += etc_mounts(pod)
    mounts += [parse_tmpfs(text) for text in read_only_tmpfs(pod)]
    volumes, volume_trees = volume_mounts(spec, user_namespace)
    mounts += volumes
    mounts += [parse_tmpfs(text) for text in isolation.tmpfs]
    if isolation.init:
        mounts.append(BindMount(TINI, INIT_PATH, read_only=True))
    lockdown: list[MountOperation] = [MaskPath(path) for path in (*MASKED_PATHS, *thermal_throttle_paths())]
    lockdown += [ReadOnlyPath(path) for path in READ_ONLY_PATHS]
    if isolation.read_only:
        lockdown.append(ReadOnlyRoot())
    lowers, overlay = root_mount(pod, user_namespace)
    return ContainerPlan(
        directory=str(stage1_dir(pod)),
        root="rootfs",
        lowers=lowers,
        volume_trees=tuple(volume_trees),
        overlay=overlay,
        hostname=pod_hostname(pod),
        mounts=tuple(mounts),
        lockdown=tuple(lockdown),
        capabilities=capabilities_of(spec),
        seccomp_filter=None if isolation.seccomp == "unconfined" else str(seccomp_filter_path(pod)),
        user_namespace=user_namespace,
        host_network=spec.net == "host",
        netns=spec.pod_namespaces.get("net") or str(NETNS_DIR / netns_name(pod.uuid)),
        init=isolation.init,
        notify=spec.service.notify,
        payload_cgroup=may_mount_cgroups(spec),
        sysctls=sysctl_settings(spec),
        joins=pod_joins(spec),
    )


JOINED_KINDS = (("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS))  # besides the network's (netns)


def pod_joins(spec: PodSpec) -> tuple[tuple[str, int], ...]:
    """An app of a pod of several apps joins the pod's IPC and UTS namespaces (its network one is
    the plan's netns); its mount, PID and cgroup namespaces are its own."""
    return tuple((spec.pod_namespaces[kind], flag) for kind, flag in JOINED_KINDS if kind in spec.pod_namespaces)
