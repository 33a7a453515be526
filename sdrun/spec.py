"""The container spec: what to run and how, as frozen records.

A spec comes from CLI flags or from a TOML spec file; both are first reduced to
the same flat mapping of settings (the TOML keys are the long flag names with
`_` for `-`), so one table of converters validates both and rejects unknown keys.

The records are NamedTuples, as everywhere in sdrun (sdrun.records says why).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sdrun import records
from sdrun.errors import SpecError
from sdrun.net import HOST_GATEWAY
from sdrun.net.ports import PortMapping

RESTART_POLICIES = ("no", "on-failure", "always")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MEMORY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


VOLUME_OPTIONS = frozenset({"ro", "rw", "U", "idmap"})  # -v HOST:CTR[:OPTIONS], comma-separated


class Volume(NamedTuple):
    source: str  # absolute path on the host
    target: str  # absolute path inside the container
    read_only: bool = False
    chown: bool = False  # :U, as podman's: the source is chowned to the app's user as the host sees it
    idmap: bool = False  # :idmap, as podman's: bound through the pod's id map (host root's files are its root's)

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        options = parts[2].split(",") if len(parts) == 3 else []
        if len(parts) not in (2, 3) or not set(options) <= VOLUME_OPTIONS or {"ro", "rw"} <= set(options):
            raise SpecError(
                f"invalid volume '{text}': expected HOST:CONTAINER[:OPTIONS], OPTIONS ro or rw, and U or idmap"
            )
        if {"U", "idmap"} <= set(options):
            raise SpecError(f"invalid volume '{text}': U (chown the source) and idmap (map its ids) exclude each other")
        source, target = parts[:2]
        if not (source.startswith("/") and target.startswith("/")):
            raise SpecError(f"invalid volume '{text}': both paths must be absolute")
        target = normal_path(target)
        _check_mount_target(target, f"volume '{text}'")
        if not Path(source).exists():
            raise SpecError(f"volume source '{source}' does not exist")
        return cls(normal_path(source), target, "ro" in options, "U" in options, "idmap" in options)

    def __str__(self) -> str:
        extra = ",U" if self.chown else ",idmap" if self.idmap else ""
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}{extra}"


class Resources(NamedTuple):
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None  # None: DEFAULT_PIDS_LIMIT in the unit; NO_PIDS_LIMIT: none


class AppSpec(NamedTuple):
    argv: tuple[str, ...] = ()
    env: dict[str, str] = {}  # noqa: RUF012 - never mutated: the spec is frozen
    workdir: str | None = None
    user: str | None = None  # NAME|UID[:GROUP|GID], resolved against the rootfs
    volumes: tuple[Volume, ...] = ()
    entrypoint: tuple[str, ...] | None = None  # image pods: replaces the image's Entrypoint and drops its Cmd
    ulimits: tuple[str, ...] = ()  # NAME=SOFT:HARD resource limits (setrlimit), as parse_ulimit writes them


class Isolation(NamedTuple):
    """How a namespace-isolating stage1 confines the app; docs/stage1.md documents each default."""

    hostname: str | None = None  # [the pod name]
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: str = "default"  # default | unconfined | path of an OCI JSON profile
    private_users: str | None = None  # auto | UID:COUNT; None = no user namespace
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()  # PATH[:OPTIONS]
    device: tuple[str, ...] = ()  # HOST:CONTAINER:PERMS, as parse_device writes them
    init: bool = False
    selinux_type: str | None = None
    apparmor: str | None = None
    add_host: tuple[str, ...] = ()  # NAME:IP lines added to /etc/hosts, as parse_add_host writes them
    dns: tuple[str, ...] = ()  # nameservers of /etc/resolv.conf [the host's, or its network's]
    dns_search: tuple[str, ...] = ()  # its search domains ("." alone: none) [the host's]
    dns_option: tuple[str, ...] = ()  # its options [the host's]
    sysctl: tuple[str, ...] = ()  # KEY=VALUE of namespaced sysctls, as parse_sysctl writes them

    def flags_given(self) -> dict[str, bool]:
        """Whether each setting differs from its default, by its flag: a stage1 that cannot
        honour one refuses it rather than ignore it (stage1.interface.refuse_flags)."""
        return {
            "--hostname": self.hostname is not None,
            "--cap-add": bool(self.cap_add),
            "--cap-drop": bool(self.cap_drop),
            "--seccomp": self.seccomp != "default",
            "--private-users": self.private_users is not None,
            "--read-only": self.read_only,
            "--tmpfs": bool(self.tmpfs),
            "--device": bool(self.device),
            "--init": self.init,
            "--selinux-type": self.selinux_type is not None,
            "--apparmor": self.apparmor is not None,
            "--add-host": bool(self.add_host),
            "--dns": bool(self.dns),
            "--dns-search": bool(self.dns_search),
            "--dns-option": bool(self.dns_option),
            "--sysctl": bool(self.sysctl),
        }

    def own_resolv_conf(self) -> bool:
        """Whether the pod's resolv.conf is its own, not the host's copy nor its network's."""
        return bool(self.dns or self.dns_search or self.dns_option)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Isolation:
        tuples = ("cap_add", "cap_drop", "tmpfs", "device", "add_host", "dns", "dns_search", "dns_option", "sysctl")
        values: dict[str, Any] = {key: tuple(value) if key in tuples else value for key, value in data.items()}
        return cls(**values)


class ServiceOptions(NamedTuple):
    """How systemd runs the pod's service beyond the app itself; docs/units.md documents each."""

    requires: tuple[str, ...] = ()  # pods whose units start first and must stay up: Requires=, After=
    restart_sec: float | None = None  # RestartSec= [systemd's 100 ms]
    start_limit_interval: float | None = None  # StartLimitIntervalSec= [systemd's 10 s]
    start_limit_burst: int | None = None  # StartLimitBurst= [systemd's 5]
    notify: bool = False  # the app itself says READY=1 (sd_notify) instead of the stage1
    listen: tuple[str, ...] = ()  # socket activation: ListenStream= of sdrun-NAME.socket (installed units)
    healthcheck: tuple[str, ...] = ()  # a command run with `sdrun enter`; failing restarts the pod
    healthcheck_interval: float = 30.0  # seconds between health checks
    wanted_by: tuple[str, ...] = ()  # targets that start the installed unit: [Install] WantedBy=

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceOptions:
        tuples = ("requires", "listen", "healthcheck", "wanted_by")
        values: dict[str, Any] = {key: tuple(value) if key in tuples else value for key, value in data.items()}
        return cls(**values)


class PodSpec(NamedTuple):
    name: str
    stage1: str
    rootfs: str | None = None
    image: str | None = None
    app: AppSpec = AppSpec()
    resources: Resources = Resources()
    restart: str = "no"
    labels: dict[str, str] = {}  # noqa: RUF012 - never mutated: the spec is frozen
    scope: bool = False  # run in a transient scope under the CLI instead of a service
    net: str = "none"  # host | none (a private network namespace with loopback only) | default | a network's name
    ports: tuple[PortMapping, ...] = ()  # published ports (a network pod only)
    stop_signal: str | None = None  # KillSignal= [SIGTERM]
    stop_timeout: float | None = None  # seconds before SIGKILL (TimeoutStopSec=) [systemd's default]
    kvm_accel: str = "auto"  # the kvm stage1's accelerator: kvm, tcg, or auto (KVM if a probe boots, else TCG)
    kvm_kernel: str | None = None  # the kvm stage1's guest kernel [the newest /boot/vmlinuz-*-cloud-amd64]
    isolation: Isolation = Isolation()
    service: ServiceOptions = ServiceOptions()

    def to_json(self) -> dict[str, Any]:
        plain: dict[str, Any] = records.plain(self)
        return plain

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodSpec:
        app = dict(data["app"])
        app["argv"] = tuple(app["argv"])
        app["volumes"] = tuple(Volume(**volume) for volume in app["volumes"])
        app["ulimits"] = tuple(app.get("ulimits", ()))
        if app.get("entrypoint") is not None:
            app["entrypoint"] = tuple(app["entrypoint"])
        nested = ("app", "resources", "isolation", "service", "ports")
        return cls(
            **{key: value for key, value in data.items() if key not in nested},
            ports=tuple(PortMapping(**port) for port in data.get("ports", ())),
            app=AppSpec(**app),
            resources=Resources(**data["resources"]),
            isolation=Isolation.from_json(data.get("isolation", {})),
            service=ServiceOptions.from_json(data.get("service", {})),
        )


# --- converters: each takes the raw value (a CLI string or a TOML value) ---


def parse_memory(value: object) -> int:
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text)
    size = int(float(match[1]) * MEMORY_UNITS[match[2]]) if match else 0
    if size < 1:  # 0.5 is no whole byte: systemd would refuse it only once the unit is made
        raise SpecError(f"invalid memory value '{value}': expected a size like 512K, 256M or 2G")
    return size


def parse_cpus(value: object) -> float:
    try:
        cpus = float(str(value))
    except ValueError:
        cpus = 0.0
    if cpus <= 0:
        raise SpecError(f"invalid cpus value '{value}': expected a positive number like 0.5 or 2")
    return cpus


NO_PIDS_LIMIT = 0  # Resources.pids: no TasksMax= at all (None: sdrun's default)
NO_PIDS_LIMIT_WORDS = ("0", "-1", "max", "infinity")  # Docker's and podman's 0 and -1, cgroup's max, systemd's


def parse_pids_limit(value: object) -> int:
    text = str(value).strip().lower()
    if text in NO_PIDS_LIMIT_WORDS:
        return NO_PIDS_LIMIT
    if not text.isdigit():
        raise SpecError(f"invalid pids limit '{value}': expected a positive integer", hint="0, -1 or max for no limit")
    return int(text)


def parse_restart(value: object) -> str:
    if value not in RESTART_POLICIES:
        raise SpecError(f"invalid restart policy '{value}': expected one of {', '.join(RESTART_POLICIES)}")
    return str(value)


def parse_name(value: object) -> str:
    text = str(value)
    if not NAME_PATTERN.fullmatch(text):
        raise SpecError(f"invalid pod name '{text}': use letters, digits, '_', '.' and '-' (at most 63)")
    return text


def parse_pairs(values: object, what: str, host_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE strings (or a TOML table) to a dict; a bare KEY takes the host's value."""
    if isinstance(values, Mapping):
        return {str(key): str(value) for key, value in values.items()}
    pairs: dict[str, str] = {}
    for item in _as_list(values, what):
        key, sep, value = item.partition("=")
        if not key or any(char.isspace() for char in key):  # `export A=1`, a stray sentence: a mistake
            raise SpecError(
                f"invalid {what} '{item}': expected KEY=VALUE" + (" or KEY" if host_env is not None else "")
            )
        if not sep and host_env is not None:
            if key not in host_env:
                continue
            value = host_env[key]
        elif not sep:
            raise SpecError(f"invalid {what} '{item}': expected KEY=VALUE")
        pairs[key] = value
    return pairs


def read_env_file(path: str) -> dict[str, str]:
    """NAME=VALUE lines, as Docker's --env-file reads them: a bare NAME takes sdrun's own variable
    (none if it has none), blank lines and # comments are skipped, and anything else is refused."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise SpecError(f"cannot read env file '{path}': {error.strerror}") from None
    env: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            env |= parse_pairs([text], f"line {number} of env file {path}:", os.environ)
    return env


def _as_list(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise SpecError(f"invalid {what}: expected a string or a list of strings")


def parse_private_users(value: object) -> str:
    text = "auto" if value is True else str(value)
    first, sep, count = text.partition(":")
    if text != "auto" and not (sep and first.isdigit() and count.isdigit() and int(count) > 0):
        raise SpecError(f"invalid --private-users '{text}': expected auto or UID:COUNT")
    if text != "auto" and int(first) + int(count) > 1 << 32:
        raise SpecError(f"invalid --private-users '{text}': the range ends past the last uid (4294967295)")
    return text


def parse_stop_signal(value: object) -> str:
    import signal

    text = str(value).upper()
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in signal.Signals.__members__:
        raise SpecError(f"invalid stop signal '{value}': expected a name like SIGTERM or SIGINT")
    return name


# setrlimit(2)'s resources by their names in Docker's --ulimit (RLIMIT_ and lower case).
RLIMITS = (
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
)  # fmt: skip (syscalls.RLIMIT_NAMES, sorted: reading a spec, as list and status do, need not load ctypes)
UNLIMITED = "unlimited"


def parse_ulimit(value: object) -> str:
    """NAME=SOFT[:HARD], as Docker's --ulimit (nofile=1024:4096, core=0); -1 or unlimited for none.
    Written back as NAME=SOFT:HARD."""
    text = str(value)
    name, sep, limits = text.partition("=")
    soft, _, hard = limits.partition(":")
    numbers = [_limit(item) for item in (soft, hard or soft)]
    if not sep or name.lower() not in RLIMITS or None in numbers:
        hint = f"names: {', '.join(RLIMITS)}; a limit is a number, -1 or unlimited"
        raise SpecError(f"invalid ulimit '{text}': expected NAME=SOFT[:HARD], e.g. nofile=1024:4096", hint=hint)
    low, high = (float("inf") if number in (None, -1) else number for number in numbers)
    if low > high:
        raise SpecError(f"invalid ulimit '{text}': the soft limit is above the hard one")
    return f"{name.lower()}=" + ":".join(UNLIMITED if number == -1 else str(number) for number in numbers)


def _limit(text: str) -> int | None:
    """A limit as a number, -1 for none; None if it is neither."""
    text = text.strip()
    if text in (UNLIMITED, "-1", "infinity"):
        return -1
    return int(text) if text.isdigit() else None


def parse_seconds(value: object, what: str = "timeout") -> float:
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise SpecError(f"invalid {what} '{value}': expected seconds, e.g. 10 or 0.5")
    return seconds


def parse_count(value: object) -> int:
    text = str(value)
    if not text.isdigit():
        raise SpecError(f"invalid count '{value}': expected a non-negative integer")
    return int(text)


def parse_listen(value: str) -> str:
    """A ListenStream= address: PORT, HOST:PORT, [IPv6]:PORT or an absolute socket path."""
    port = value.rpartition(":")[2]
    if value.startswith("/"):
        return normal_path(value)
    if port.isdigit() and 0 < int(port) < 65536 and (":" not in value or value.rpartition(":")[0]):
        return value
    raise SpecError(f"invalid listen address '{value}': expected PORT, HOST:PORT or an absolute socket path")


def parse_tmpfs(value: str) -> str:
    """PATH[:OPTIONS], OPTIONS as mount(8) takes them for tmpfs (size=64m,mode=1777,ro,exec...)."""
    path, sep, options = value.partition(":")
    path = _absolute_path(path, "tmpfs path")
    _check_mount_target(path, f"tmpfs '{value}'")
    return path + sep + options


DEVICE_PERMISSIONS = "rwm"  # DeviceAllow='s: read, write, mknod


def parse_device(value: str) -> str:
    """HOST[:CONTAINER][:PERMS], as podman's --device (/dev/fuse, /dev/sda:/dev/xvda:rwm): a device
    node of the host's /dev, where the container sees it [the same path], and what the app may do
    with it [rwm]. Written back as HOST:CONTAINER:PERMS."""
    import stat

    host, _, rest = value.partition(":")
    target, _, permissions = rest.partition(":") if rest.startswith("/") else ("", "", rest)
    host = _absolute_path(host, "device")
    target = normal_path(target) if target else host
    permissions = permissions or DEVICE_PERMISSIONS
    if not set(permissions) <= set(DEVICE_PERMISSIONS) or len(set(permissions)) != len(permissions):
        raise SpecError(f"invalid device '{value}': expected HOST[:CONTAINER][:PERMS], PERMS of r, w and m")
    _check_mount_target(target, f"device '{value}'")
    try:
        mode = os.stat(host).st_mode
    except OSError as error:
        raise SpecError(f"device '{host}': {error.strerror}") from None
    if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        raise SpecError(f"device '{host}' is not a device node")
    if not os.path.realpath(host).startswith("/dev/"):  # what systemd's DeviceAllow= takes
        raise SpecError(f"device '{host}' is not under /dev")
    return f"{host}:{target}:{permissions}"


KERNEL_INTERFACES = ("/proc", "/sys")  # the stage1 mounts them, masked and read-only where it must be


def _check_mount_target(target: str, what: str) -> None:
    """Volumes and tmpfs go anywhere but over the root, /proc and /sys (and below them). The stage1
    checks again where a target resolves to, since a link in the image may lead there."""
    if target == "/":
        raise SpecError(f"invalid {what}: it cannot replace the container's root")
    if any(target == path or target.startswith(path + "/") for path in KERNEL_INTERFACES):
        raise SpecError(f"invalid {what}: nothing may be mounted over the container's /proc or /sys")


def parse_flag(value: object, key: str) -> bool:
    """A yes/no setting: a TOML boolean (a CLI flag gives True)."""
    if not isinstance(value, bool):
        raise SpecError(f"invalid {key} {value!r}: expected true or false (a TOML boolean, unquoted)")
    return value


def parse_choice(value: object, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise SpecError(f"invalid {what} '{value}': expected one of {', '.join(choices)}")
    return str(value)


HOSTNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the kernel takes 64 bytes at most


def parse_hostname(value: object) -> str:
    """Letters, digits, '.', '-' and '_': it is written into the pod's /etc/hosts too."""
    text = str(value)
    if not HOSTNAME_PATTERN.fullmatch(text):
        raise SpecError(f"invalid hostname '{text}': use letters, digits, '.', '-' and '_' (at most 64)")
    return text


def parse_add_host(value: object) -> str:
    """NAME:IP, as Docker's --add-host (an IPv6 address after the first ':', bracketed or not), or
    NAME:host-gateway. Written back as NAME:IP."""
    text = str(value)
    name, _, address = text.partition(":")
    address = address.removeprefix("[").removesuffix("]") if address.startswith("[") else address
    if not HOSTNAME_PATTERN.fullmatch(name) or not (address == HOST_GATEWAY or _ip_address(address)):
        raise SpecError(f"invalid --add-host '{text}': expected NAME:IP (an IPv4 or IPv6 address, or {HOST_GATEWAY})")
    return f"{name}:{address if address == HOST_GATEWAY else _ip_address(address)}"


def parse_dns(value: object) -> str:
    text = str(value)
    address = _ip_address(text)
    if not address:
        raise SpecError(f"invalid --dns '{text}': expected the IPv4 or IPv6 address of a nameserver")
    return address


def _ip_address(text: str) -> str | None:
    """The address in its usual spelling, or None if text is none."""
    import ipaddress  # here: reading a spec without these settings need not load it

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


DOMAIN_PATTERN = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")


def parse_dns_search(value: object) -> str:
    """A search domain of resolv.conf; "." alone for none (as podman's)."""
    text = str(value)
    if text != "." and not DOMAIN_PATTERN.fullmatch(text):
        raise SpecError(f"invalid --dns-search '{text}': expected a domain name, or . for none")
    return text


def parse_dns_option(value: object) -> str:
    """An option of resolv.conf (ndots:2, edns0, timeout:1...): one word."""
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]+(:[0-9]+)?", text):
        raise SpecError(f"invalid --dns-option '{text}': expected a resolv.conf option, e.g. ndots:2 or edns0")
    return text


# The sysctls a pod may set: those the kernel keeps per namespace, as runc's and podman's allow them
# (net.* only with a network namespace of the pod's own: build_spec checks). kernel.hostname and
# kernel.domainname (the UTS namespace's) are --hostname's.
IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
SYSCTL_KEY = re.compile(r"[a-z0-9_-]+(\.[A-Za-z0-9_-]+)+")


def parse_sysctl(value: object) -> str:
    """KEY=VALUE, the key dotted (net.ipv4.ip_unprivileged_port_start=80), of a sysctl the pod's own
    namespaces hold: the IPC namespace's kernel.* and fs.mqueue.*, and net.*. Written back as is."""
    text = str(value)
    key, sep, setting = text.partition("=")
    if not sep or not SYSCTL_KEY.fullmatch(key) or not setting or "\n" in setting:
        raise SpecError(f"invalid --sysctl '{text}': expected KEY=VALUE, e.g. net.ipv4.ip_forward=1")
    if key in ("kernel.hostname", "kernel.domainname"):
        raise SpecError(f"--sysctl {key} is not supported: the pod's hostname is --hostname's")
    if not (key in IPC_SYSCTLS or key.startswith(("fs.mqueue.", "net."))):
        raise SpecError(
            f"--sysctl {key} is not namespaced: a pod may set net.*, fs.mqueue.* and the IPC namespace's kernel.*",
            hint=", ".join(sorted(IPC_SYSCTLS)),
        )
    return f"{key}={setting}"


def parse_network(value: object) -> str:
    """host, none, default, or the name of a network made with `sdrun network create`."""
    text = str(value)
    if not NAME_PATTERN.fullmatch(text):
        raise SpecError(f"invalid network '{text}': expected host, none, default or a network name")
    return text


def _absolute_path(value: object, what: str) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise SpecError(f"invalid {what} '{text}': must be an absolute path")
    return normal_path(text)


def normal_path(path: str) -> str:
    """An absolute path without `.`, `..`, repeated or trailing slashes: os.path.normpath keeps a
    leading `//` (POSIX leaves its meaning open), and `//` would pass for another path than `/`."""
    return "/" + os.path.normpath(path).lstrip("/")


# One table: every setting a spec file or the CLI may give, and how to check it.
SETTINGS: dict[str, Callable[[object], object]] = {
    "name": parse_name,
    "stage1": str,
    "rootfs": lambda value: str(Path(str(value)).absolute()),
    "image": str,
    "exec": lambda value: tuple(_as_list(value, "exec")),
    "entrypoint": lambda value: tuple(item for item in _as_list(value, "entrypoint") if item),  # "" clears it
    "env": lambda value: parse_pairs(value, "env", os.environ),
    "env_file": lambda value: _as_list(value, "env_file"),
    "workdir": lambda value: _absolute_path(value, "workdir"),
    "user": str,
    "volume": lambda value: tuple(Volume.parse(item) for item in _as_list(value, "volume")),
    "ulimit": lambda value: tuple(parse_ulimit(item) for item in _as_list(value, "ulimit")),
    "memory": parse_memory,
    "cpus": parse_cpus,
    "pids_limit": parse_pids_limit,
    "restart": parse_restart,
    "label": lambda value: parse_pairs(value, "label"),
    "scope": lambda value: parse_flag(value, "scope"),
    "net": parse_network,
    "port": lambda value: tuple(PortMapping.parse(item) for item in _as_list(value, "port")),
    "stop_signal": parse_stop_signal,
    "stop_timeout": parse_seconds,
    "hostname": parse_hostname,
    "cap_add": lambda value: tuple(_as_list(value, "cap_add")),
    "cap_drop": lambda value: tuple(_as_list(value, "cap_drop")),
    "seccomp": str,
    "private_users": parse_private_users,
    "read_only": lambda value: parse_flag(value, "read_only"),
    "tmpfs": lambda value: tuple(parse_tmpfs(item) for item in _as_list(value, "tmpfs")),
    "device": lambda value: tuple(parse_device(item) for item in _as_list(value, "device")),
    "init": lambda value: parse_flag(value, "init"),
    "selinux_type": str,
    "apparmor": str,
    "add_host": lambda value: tuple(parse_add_host(item) for item in _as_list(value, "add_host")),
    "dns": lambda value: tuple(parse_dns(item) for item in _as_list(value, "dns")),
    "dns_search": lambda value: tuple(parse_dns_search(item) for item in _as_list(value, "dns_search")),
    "dns_option": lambda value: tuple(parse_dns_option(item) for item in _as_list(value, "dns_option")),
    "sysctl": lambda value: tuple(parse_sysctl(item) for item in _as_list(value, "sysctl")),
    "kvm_accel": lambda value: parse_choice(value, ("kvm", "tcg", "auto"), "kvm accelerator"),
    "kvm_kernel": lambda value: str(Path(str(value)).absolute()),
    "requires": lambda value: tuple(parse_name(item) for item in _as_list(value, "requires")),
    "restart_sec": lambda value: parse_seconds(value, "restart_sec"),
    "start_limit_interval": lambda value: parse_seconds(value, "start_limit_interval"),
    "start_limit_burst": parse_count,
    "notify": lambda value: parse_flag(value, "notify"),
    "listen": lambda value: tuple(parse_listen(item) for item in _as_list(value, "listen")),
    "healthcheck": lambda value: tuple(_as_list(value, "healthcheck")),
    "healthcheck_interval": parse_seconds,
    "wanted_by": lambda value: tuple(_as_list(value, "wanted_by")),
}
ISOLATION_SETTINGS = Isolation._fields
SERVICE_SETTINGS = ServiceOptions._fields


def check_settings(raw: Mapping[str, object], origin: str) -> dict[str, object]:
    """Convert raw settings through SETTINGS; unknown keys and bad values name their origin."""
    checked: dict[str, object] = {}
    for key, value in raw.items():
        if value is None or value == ():
            continue
        if key not in SETTINGS:
            raise SpecError(f"{origin}: unknown key '{key}'", hint=f"known keys: {', '.join(sorted(SETTINGS))}")
        try:
            checked[key] = SETTINGS[key](value)
        except SpecError as error:
            raise SpecError(f"{origin}: {error.message}") from None
    return checked


def load_spec_file(path: Path) -> dict[str, object]:
    import tomllib  # only spec files need it: not worth its import time on every run

    try:
        with path.open("rb") as stream:
            raw = tomllib.load(stream)
    except OSError as error:
        raise SpecError(f"cannot read spec file '{path}': {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: invalid TOML: {error}") from None
    _check_command_lists(raw, str(path))
    return check_settings(raw, str(path))


# Keys whose value is a command's words. A spec file gives them as a TOML array: a string would
# be one word, `exec = "echo a b"` a program 'echo a b' not found, a health check never passing.
# (Not in SETTINGS: a unit's `prepare` gives a one-word command as a string.)
COMMAND_KEYS = ("exec", "healthcheck")


def _check_command_lists(raw: Mapping[str, object], origin: str) -> None:
    for key in COMMAND_KEYS:
        value = raw.get(key)
        if value is not None and not isinstance(value, list):
            hint = _as_words(key, value) if isinstance(value, str) else None
            raise SpecError(f"{origin}: invalid {key} {value!r}: expected a list of words", hint=hint)


def _as_words(key: str, text: str) -> str | None:
    """The key as it would be spelled with text's words (as a shell splits them), if it can."""
    import json
    import shlex

    try:
        return f"{key} = {json.dumps(shlex.split(text))}"
    except ValueError:  # an unbalanced quote
        return None


def build_spec(settings: Mapping[str, Any], *, default_name: str, default_stage1: str) -> PodSpec:
    """Assemble a PodSpec from checked settings (spec file values overridden by flags)."""
    if bool(settings.get("rootfs")) == bool(settings.get("image")):
        raise SpecError("give exactly one of --rootfs DIR or an IMAGE")
    from stage1.interface import default_network

    stage1 = settings.get("stage1", default_stage1)
    net = settings.get("net") or default_network(stage1)
    if settings.get("port") and net in ("host", "none"):
        raise SpecError("--port needs a network: --net default or --net NAME")
    if net in ("host", "none") and any(item.endswith(":" + HOST_GATEWAY) for item in settings.get("add_host", ())):
        raise SpecError(f"--add-host NAME:{HOST_GATEWAY} needs a network: --net default or --net NAME")
    if net == "host" and any(item.startswith("net.") for item in settings.get("sysctl", ())):
        raise SpecError("--sysctl net.* needs a network namespace of the pod's own: --net host shares the host's")
    if settings.get("scope") and settings.get("restart", "no") != "no":
        raise SpecError("--restart needs a service: systemd restarts no --scope pod, which runs under the CLI")
    rootfs = settings.get("rootfs")
    if rootfs is not None and not Path(rootfs).is_dir():
        raise SpecError(f"rootfs '{rootfs}' is not a directory")
    env = {"PATH": DEFAULT_PATH}
    for env_file in settings.get("env_file", ()):
        env |= read_env_file(env_file)
    env |= settings.get("env", {})
    app = AppSpec(
        argv=settings.get("exec", ()),
        env=env,
        workdir=settings.get("workdir"),
        user=settings.get("user"),
        volumes=settings.get("volume", ()),
        entrypoint=settings.get("entrypoint"),
        ulimits=settings.get("ulimit", ()),
    )
    resources = Resources(settings.get("memory"), settings.get("cpus"), settings.get("pids_limit"))
    return PodSpec(
        name=settings.get("name", default_name),
        stage1=stage1,
        rootfs=rootfs,
        image=settings.get("image"),
        app=app,
        resources=resources,
        restart=settings.get("restart", "no"),
        labels=settings.get("label", {}),
        scope=settings.get("scope", False),
        net=net,
        ports=settings.get("port", ()),
        stop_signal=settings.get("stop_signal"),
        stop_timeout=settings.get("stop_timeout"),
        kvm_accel=settings.get("kvm_accel", "auto"),
        kvm_kernel=settings.get("kvm_kernel"),
        isolation=Isolation(**{key: settings[key] for key in ISOLATION_SETTINGS if key in settings}),
        service=ServiceOptions(**{key: settings[key] for key in SERVICE_SETTINGS if key in settings}),
    )
