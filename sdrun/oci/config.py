"""A bundle's config.json, read into what the container's set-up carries out.

Every field is either carried out, or refused with one line naming it: a field that would
change the container's confinement is never ignored. docs/oci.md lists each field's status.
The plan is plain data (mounts as sdrun.linux.mounts operations, capabilities as a mask,
seccomp as a compiled BPF program, the app as stage1.process's AppPlan), so that the forked
set-up code needs nothing of this module.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.linux import caps
from sdrun.linux import syscalls as sc
from sdrun.linux.mounts import BindMount, FilesystemMount, MaskPath, MountOperation, ReadOnlyPath, ReadOnlyRoot, Symlink
from sdrun.oci import hooks as oci_hooks
from stage1.namespace.container import DEV_LINKS, DEVICES

if TYPE_CHECKING:
    from sdrun.oci.hooks import Hook
    from stage1.process import AppPlan

CONFIG = "config.json"
# runc's rule for container IDs: they name a directory and a unit.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}")
NAMESPACE_FLAGS = {
    "mount": sc.CLONE_NEWNS,
    "uts": sc.CLONE_NEWUTS,
    "ipc": sc.CLONE_NEWIPC,
    "network": sc.CLONE_NEWNET,
    "pid": sc.CLONE_NEWPID,
    "cgroup": sc.CLONE_NEWCGROUP,
}
MOUNT_FLAGS = {
    "ro": (sc.MS_RDONLY, True),
    "rw": (sc.MS_RDONLY, False),
    "nosuid": (sc.MS_NOSUID, True),
    "suid": (sc.MS_NOSUID, False),
    "nodev": (sc.MS_NODEV, True),
    "dev": (sc.MS_NODEV, False),
    "noexec": (sc.MS_NOEXEC, True),
    "exec": (sc.MS_NOEXEC, False),
    "noatime": (sc.MS_NOATIME, True),
    "strictatime": (1 << 24, True),  # MS_STRICTATIME
    "relatime": (1 << 21, True),  # MS_RELATIME
    "sync": (0x10, True),  # MS_SYNCHRONOUS
}
# Ignored on purpose: the container's mount namespace is a slave of the host's, and nothing it
# mounts propagates back; "async" and "atime" are the kernel's defaults.
IGNORED_MOUNT_OPTIONS = {"bind", "rbind", "private", "rprivate", "slave", "rslave", "async", "atime", "norelatime"}
FILESYSTEMS = {"proc", "sysfs", "tmpfs", "devpts", "mqueue"}
# Top-level and linux fields this runtime carries out (or knowingly leaves to the caller).
KNOWN_TOP = {"ociVersion", "process", "root", "hostname", "mounts", "annotations", "linux", "hooks"}
KNOWN_LINUX = {
    "namespaces",
    "resources",
    "cgroupsPath",
    "maskedPaths",
    "readonlyPaths",
    "seccomp",
    "sysctl",
    "devices",
}
KNOWN_PROCESS = {
    "terminal",
    "user",
    "args",
    "env",
    "cwd",
    "capabilities",
    "rlimits",
    "noNewPrivileges",
    "oomScoreAdj",
    "consoleSize",
}


class ConfigError(SdrunError):
    """config.json asks for what this runtime cannot do, or is malformed."""


class Namespace(NamedTuple):
    flag: int  # CLONE_NEW*
    path: str | None  # join this one (setns), or make a new one


class ContainerConfig(NamedTuple):
    """What lifecycle.create carries out: everything resolved, nothing left to read."""

    root: str  # the rootfs directory, absolute
    namespaces: tuple[Namespace, ...]
    hostname: str | None
    mounts: tuple[MountOperation, ...]  # in order, then the lockdown
    lockdown: tuple[MountOperation, ...]  # masked and read-only paths, then the read-only root
    capabilities: int  # a mask (sdrun.linux.caps)
    seccomp: bytes | None  # a compiled BPF program; None: unconfined
    app: AppPlan
    umask: int | None
    terminal: bool
    oom_score_adj: int | None
    sysctls: tuple[tuple[str, str], ...]
    cgroups_path: str
    pids_limit: int | None
    memory_limit: int | None
    annotations: dict[str, str]
    hooks: dict[str, list[Hook]]


def load(bundle: str, seccomp_cache: str | None = None) -> ContainerConfig:
    """Read and check bundle/config.json. seccomp_cache: a directory (root's alone) where compiled
    seccomp programs are kept by their profile's hash: podman passes the same profile every time."""
    if not os.path.isdir(bundle):
        raise ConfigError(f"bundle {bundle} is not a directory")
    path = os.path.join(bundle, CONFIG)
    try:
        with open(path) as stream:
            data = json.load(stream)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object")
    try:
        return parse(data, bundle, seccomp_cache)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path} is malformed: {type(error).__name__}: {error}") from None


def parse(data: dict[str, Any], bundle: str, seccomp_cache: str | None = None) -> ContainerConfig:
    _refuse_unknown("", data, KNOWN_TOP)
    linux = data.get("linux") or {}
    process = data["process"]
    _refuse_unknown("linux.", linux, KNOWN_LINUX)
    _refuse_unknown("process.", process, KNOWN_PROCESS)
    if linux.get("devices"):
        raise ConfigError("linux.devices is not supported yet")
    root = data["root"]
    root_path = os.path.join(bundle, root["path"])
    if not os.path.isdir(root_path):
        raise ConfigError(f"root.path {root['path']}: not a directory")
    namespaces = _namespaces(linux.get("namespaces") or [])
    capability_names = _capabilities(process)
    mounts = _api_defaults(data.get("mounts") or [])
    lockdown: list[MountOperation] = [MaskPath(path) for path in linux.get("maskedPaths") or []]
    lockdown += [ReadOnlyPath(path) for path in linux.get("readonlyPaths") or []]
    if root.get("readonly"):
        lockdown.append(ReadOnlyRoot())
    resources = linux.get("resources") or {}
    _refuse_unknown("linux.resources.", resources, {"devices", "pids", "memory"})
    _check_device_rules(resources.get("devices") or [])
    memory = resources.get("memory") or {}
    _refuse_unknown("linux.resources.memory.", memory, {"limit"})
    user = process.get("user") or {}
    _refuse_unknown("process.user.", user, {"uid", "gid", "umask", "additionalGids"})
    return ContainerConfig(
        root=os.path.realpath(root_path),
        namespaces=namespaces,
        hostname=data.get("hostname"),
        mounts=tuple(mounts),
        lockdown=tuple(lockdown),
        capabilities=caps.mask(capability_names),
        seccomp=_seccomp(linux.get("seccomp"), capability_names, seccomp_cache),
        app=_app(process, user),
        umask=user.get("umask"),
        terminal=bool(process.get("terminal")),
        oom_score_adj=process.get("oomScoreAdj"),
        sysctls=tuple((str(key), str(value)) for key, value in (linux.get("sysctl") or {}).items()),
        cgroups_path=str(linux.get("cgroupsPath") or ""),
        pids_limit=(resources.get("pids") or {}).get("limit"),
        memory_limit=memory.get("limit"),
        annotations={str(key): str(value) for key, value in (data.get("annotations") or {}).items()},
        hooks=oci_hooks.parse(data.get("hooks") or {}),
    )


def _refuse_unknown(prefix: str, section: dict[str, Any], known: set[str]) -> None:
    for key, value in section.items():
        if key not in known and value not in (None, {}, [], ""):
            raise ConfigError(f"config.json: {prefix}{key} is not supported by sdrun-oci", hint="see docs/oci.md")


def _namespaces(entries: list[dict[str, Any]]) -> tuple[Namespace, ...]:
    namespaces = []
    for entry in entries:
        kind = entry["type"]
        if kind == "user":
            raise ConfigError("linux.namespaces: a user namespace is not supported by sdrun-oci yet")
        if kind not in NAMESPACE_FLAGS:
            raise ConfigError(f"linux.namespaces: unknown namespace type '{kind}'")
        path = entry.get("path") or None
        if path is not None and kind == "mount":
            raise ConfigError("linux.namespaces: joining a mount namespace by path is not supported")
        if path is not None and not os.path.exists(path):
            raise ConfigError(f"linux.namespaces: {kind} namespace {path} does not exist")
        namespaces.append(Namespace(NAMESPACE_FLAGS[kind], path))
    if not any(namespace.flag == sc.CLONE_NEWNS for namespace in namespaces):
        raise ConfigError("linux.namespaces: sdrun-oci needs a mount namespace of the container's own")
    return tuple(namespaces)


def _capabilities(process: dict[str, Any]) -> frozenset[str]:
    """The one set confine_and_exec gives the app: bounding, and effective = permitted = bounding for
    root (none for another user, as the kernel's setuid does), with inheritable and ambient empty.
    Other shapes are refused."""
    sets = process.get("capabilities") or {}
    _refuse_unknown("process.capabilities.", sets, {"bounding", "effective", "permitted", "inheritable", "ambient"})
    bounding = frozenset(caps.normalize(name) for name in sets.get("bounding") or [])
    for name in ("inheritable", "ambient"):
        if sets.get(name):
            raise ConfigError(f"process.capabilities.{name} is not supported by sdrun-oci yet (only empty)")
    uid = (process.get("user") or {}).get("uid", 0)
    for name in ("effective", "permitted"):
        given = frozenset(caps.normalize(cap) for cap in sets.get(name) or [])
        wanted = bounding if uid == 0 else frozenset()
        if given != wanted:
            raise ConfigError(
                f"process.capabilities.{name} must equal bounding for uid 0 and be empty for other users "
                "(sdrun-oci does not support other combinations yet)"
            )
    return bounding


def _check_device_rules(rules: list[dict[str, Any]]) -> None:
    """The device cgroup: the scope's DevicePolicy=closed allows the default devices only, which is
    what a deny-all rule (podman's, containerd's) and runc's defaults give."""
    for rule in rules:
        if rule.get("allow"):
            raise ConfigError("linux.resources.devices: allowing devices is not supported by sdrun-oci yet")


def _api_defaults(entries: list[dict[str, Any]]) -> list[MountOperation]:
    """config.json's mounts, and, right after a tmpfs at /dev, the device nodes and links a runtime
    provides on its own (runc's default devices): bound from the host, as the namespace stage1 does."""
    mounts: list[MountOperation] = []
    for entry in entries:
        if entry.get("type") in ("cgroup", "cgroup2"):
            # No cgroup namespace (a hybrid hierarchy): /sys/fs/cgroup stays the empty directory of
            # the container's sysfs rather than showing the host's tree. docs/oci.md.
            mount_flags(list(entry.get("options") or []))  # still refuses an option it cannot honour
            continue
        mounts.append(mount_operation(entry))
        if entry.get("destination") == "/dev" and entry.get("type") == "tmpfs":
            mounts += [BindMount(f"/dev/{device}", f"/dev/{device}") for device in DEVICES]
            mounts += [Symlink(link, target) for link, target in DEV_LINKS]
    return mounts


def mount_flags(options: list[str]) -> tuple[int, list[str]]:
    """(MS_* flags, the options left for the file system's data)."""
    flags, data = 0, []
    for option in options:
        if option in MOUNT_FLAGS:
            bit, on = MOUNT_FLAGS[option]
            flags = flags | bit if on else flags & ~bit
        elif option in IGNORED_MOUNT_OPTIONS:
            continue
        elif option in {"shared", "rshared", "unbindable", "runbindable", "tmpcopyup", "idmap", "ridmap"}:
            raise ConfigError(f"mount option '{option}' is not supported by sdrun-oci yet")
        else:
            data.append(option)
    return flags, data


def mount_operation(entry: dict[str, Any]) -> MountOperation:
    destination = entry["destination"]
    if not destination.startswith("/"):
        raise ConfigError(f"mount destination '{destination}' is not an absolute path")
    options = list(entry.get("options") or [])
    kind = entry.get("type") or ("bind" if {"bind", "rbind"} & set(options) else "")
    flags, data = mount_flags(options)
    if kind == "bind" or {"bind", "rbind"} & set(options):
        if data:
            raise ConfigError(f"mount {destination}: bind option(s) {','.join(data)} not supported")
        return FlaggedBind(entry["source"], destination, flags)
    if kind not in FILESYSTEMS:
        raise ConfigError(f"mount {destination}: file system type '{kind}' is not supported by sdrun-oci")
    return FilesystemMount(kind, destination, flags, ",".join(data) or None)


class FlaggedBind(MountOperation):
    """A bind mount (recursive, as bind_in_root makes it) with the MS_* flags config.json gives it
    (ro, nosuid, nodev, noexec...), set on the new mount by a remount: a bind ignores them at creation."""

    FIELDS = ("source", "target", "flags")
    __slots__ = FIELDS

    def __init__(self, source: str, target: str, flags: int) -> None:
        self.source, self.target, self.flags = source, target, flags

    def describe(self) -> str:
        return f"bind {self.source} on {self.target} (flags {self.flags:#x})"

    def execute(self, root: str | os.PathLike[str]) -> None:
        from sdrun.linux.inroot import bind_in_root, open_in_root

        bind_in_root(self.source, root, self.target)
        if self.flags:
            with open_in_root(root, self.target, os.O_PATH) as fd:
                sc.mount(None, f"/proc/self/fd/{fd}", None, sc.MS_REMOUNT | sc.MS_BIND | self.flags)


def _seccomp(profile: dict[str, Any] | None, capabilities: frozenset[str], cache: str | None) -> bytes | None:
    if not profile:
        return None
    _refuse_unknown("linux.seccomp.", profile, {"defaultAction", "defaultErrnoRet", "architectures", "syscalls"})
    import hashlib

    from sdrun.linux import seccomp

    text = json.dumps(profile, sort_keys=True)
    key = hashlib.sha256(json.dumps([seccomp.PROFILE_FORMAT, text, sorted(capabilities)]).encode()).hexdigest()
    cached = os.path.join(cache, f"{key}.bpf") if cache else None
    if cached is not None and os.path.exists(cached):
        with open(cached, "rb") as stream:
            return stream.read()
    program = seccomp.compile_profile(seccomp.parse_oci_profile(text, capabilities, "linux.seccomp"))
    if cache is not None and cached is not None:
        from sdrun.files import write_atomically

        os.makedirs(cache, mode=0o700, exist_ok=True)
        write_atomically(cached, program, mode=0o600)  # a racing create sees the whole program or none
    return program


def _app(process: dict[str, Any], user: dict[str, Any]) -> AppPlan:
    args = [str(arg) for arg in process["args"]]
    if not args:
        raise ConfigError("process.args is empty")
    env = {}
    for text in process.get("env") or []:
        key, _, value = str(text).partition("=")
        env[key] = value
    cwd = process.get("cwd") or "/"
    if not cwd.startswith("/"):
        raise ConfigError(f"process.cwd '{cwd}' is not an absolute path")
    return {
        "executable": args[0],
        "argv": args,
        "env": env,
        "workdir": cwd,
        "uid": int(user.get("uid", 0)),
        "gid": int(user.get("gid", 0)),
        "groups": [int(gid) for gid in user.get("additionalGids") or []],
        "rlimits": [_rlimit(entry) for entry in process.get("rlimits") or []],
    }


def _rlimit(entry: dict[str, Any]) -> tuple[int, int, int]:
    name = str(entry["type"]).removeprefix("RLIMIT_").lower()
    if name not in sc.RLIMIT_NAMES:
        raise ConfigError(f"process.rlimits: unknown limit '{entry['type']}'")
    return sc.RLIMIT_NAMES.index(name), int(entry["soft"]), int(entry["hard"])
