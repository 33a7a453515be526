"""The container spec: what to run and how, as frozen records, and the table of its settings.

A spec comes from CLI flags, from a TOML spec file or from an installed unit's
arguments; each is first reduced to the same flat mapping of settings (the TOML
keys are the long flag names with `_` for `-`), which the settings table
(SETTINGS_TABLE: sdrun.settings says what a row holds) checks, rejecting unknown
keys, and puts together into a PodSpec.

The records are NamedTuples, as everywhere in sdrun (sdrun.records says why).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sdrun import records
from sdrun.errors import SpecError
from sdrun.net import HOST_GATEWAY
from sdrun.net.ports import PortMapping
from sdrun.settings import (
    COMMAND,
    FLAG,
    IMAGE_COMMAND,
    IMAGE_DEFAULT,
    IMAGE_UNDER,
    MULTIPLE,
    ONE_APP,
    OPTIONAL_VALUE,
    PATH,
    POD,
    POD_AND_APP,
    RUN,
    STAGE1_FIELD,
    UNITS,
    Setting,
    by_key,
    with_field_defaults,
)

RESTART_POLICIES = ("no", "on-failure", "always")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MEMORY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DEFAULT_STAGE1 = "namespace"  # the command line's, a unit's and the generator's
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

    def own_resolv_conf(self) -> bool:
        """Whether the pod's resolv.conf is its own, not the host's copy nor its network's."""
        return bool(self.dns or self.dns_search or self.dns_option)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Isolation:
        return cls(**_lists_as_tuples(data))


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
        return cls(**_lists_as_tuples(data))


def _lists_as_tuples(data: Mapping[str, Any]) -> dict[str, Any]:
    """A record's fields as pod.json has them: JSON has lists where the records have tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}


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
    isolation: Isolation = Isolation()
    service: ServiceOptions = ServiceOptions()
    stage1_settings: dict[str, Any] = {}  # noqa: RUF012 - a stage1's own settings (Stage1.settings) given, by key
    # An app of a pod of several apps (sdrun.pods): the pod's namespace files it joins, by kind
    # (net, ipc, uts); {} for a pod of its own.
    pod_namespaces: dict[str, str] = {}  # noqa: RUF012 - never mutated: the spec is frozen

    def to_json(self) -> dict[str, Any]:
        plain: dict[str, Any] = records.plain(self)
        return plain

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodSpec:
        app = _lists_as_tuples(data["app"])
        app["volumes"] = tuple(Volume(**volume) for volume in app["volumes"])
        nested = ("app", "resources", "isolation", "service", "ports", "stage1_settings")
        # A pod made before a stage1's settings were its own has them as fields of the spec (kvm_accel).
        stage1_settings = {key: value for key, value in data.items() if key not in cls._fields}
        return cls(
            **{key: value for key, value in data.items() if key not in nested and key in cls._fields},
            stage1_settings=stage1_settings | data.get("stage1_settings", {}),
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


def _each(parse: Callable[[Any], object], key: str) -> Callable[[object], tuple[object, ...]]:
    """A repeatable setting's converter: parse applied to each item of a string or list of strings."""
    return lambda value: tuple(parse(item) for item in _as_list(value, key))


def _words(key: str) -> Callable[[object], tuple[str, ...]]:
    return lambda value: tuple(_as_list(value, key))


def _flag(key: str) -> Callable[[object], bool]:
    return lambda value: parse_flag(value, key)


def _absolute(value: object) -> str:
    return str(Path(str(value)).absolute())


RECORDS = {"app": AppSpec, "resources": Resources, "isolation": Isolation, "service": ServiceOptions}


# The settings table: every setting a spec file or the command line may give, once (sdrun.settings
# says what a row holds and what is derived from it). The order is an installed unit's `--KEY=VALUE`
# arguments' (tests/golden), and the command line's help's. A stage1's own settings are its
# Stage1.settings rows, which follow these.
NAMESPACE_AND_KVM = ("namespace", "kvm")  # the isolation a VM has too: its guest honours them
NAMESPACE = ("namespace",)
SETTINGS_TABLE: tuple[Setting, ...] = (
    Setting("name", parse_name, "Pod name (unit sdrun-NAME.service) [random].", "name", level=POD_AND_APP),
    Setting("stage1", str, f"Isolation backend [{DEFAULT_STAGE1}].", "stage1", level=POD),
    Setting("rootfs", _absolute, "Run this directory as the root filesystem.", "rootfs", kind=PATH),
    Setting("image", str, "The image to run.", "image", positional=True),
    Setting("exec", _words("exec"), "The command.", "app.argv", kind=COMMAND, image=IMAGE_COMMAND, positional=True),
    Setting(
        "entrypoint",
        lambda value: tuple(item for item in _as_list(value, "entrypoint") if item),  # "" clears it
        "Image pods: run CMD instead of the image's entrypoint and command.",
        "app.entrypoint",
        metavar="CMD",
        image=IMAGE_COMMAND,
    ),
    Setting(
        "env",
        lambda value: parse_pairs(value, "env", os.environ),
        "Set an environment variable.",
        "app.env",
        flags=("-e", "--env"),
        kind=MULTIPLE,
        metavar="KEY=VALUE",
        image=IMAGE_UNDER,
    ),
    Setting("env_file", _words("env_file"), "Read KEY=VALUE lines from FILE.", kind=MULTIPLE, metavar="FILE"),
    Setting(
        "workdir",
        lambda value: _absolute_path(value, "workdir"),
        "Working directory inside the container.",
        "app.workdir",
        flags=("-w", "--workdir"),
        image=IMAGE_DEFAULT,
    ),
    Setting(
        "user",
        str,
        "USER[:GROUP], names or numbers from the container's /etc/passwd.",
        "app.user",
        flags=("-u", "--user"),
        image=IMAGE_DEFAULT,
    ),
    Setting(
        "volume",
        _each(Volume.parse, "volume"),
        "Bind a host path into the container; OPTIONS: ro or rw, and U or idmap.",
        "app.volumes",
        flags=("-v", "--volume"),
        kind=MULTIPLE,
        metavar="HOST:CTR[:OPTIONS]",
    ),
    Setting(
        "ulimit",
        _each(parse_ulimit, "ulimit"),
        "Resource limit, e.g. nofile=1024.",
        "app.ulimits",
        kind=MULTIPLE,
        metavar="NAME=SOFT[:HARD]",
    ),
    Setting("memory", parse_memory, "Memory limit (MemoryMax=), e.g. 256M.", "resources.memory", level=POD_AND_APP),
    Setting("cpus", parse_cpus, "CPU limit in CPUs (CPUQuota=), e.g. 0.5.", "resources.cpus", level=POD_AND_APP),
    Setting(
        "pids_limit", parse_pids_limit, "Maximum number of tasks (TasksMax=).", "resources.pids", level=POD_AND_APP
    ),
    Setting("restart", parse_restart, "Restart policy: no, on-failure or always.", "restart"),
    Setting(
        "label",
        lambda value: parse_pairs(value, "label"),
        "Attach a label to the pod.",
        "labels",
        kind=MULTIPLE,
        metavar="KEY=VALUE",
        image=IMAGE_UNDER,
    ),
    Setting(
        "scope",
        _flag("scope"),
        "Run as our child in a transient scope, on this terminal.",
        "scope",
        kind=FLAG,
        front_ends=frozenset({RUN}),  # a scope runs under the CLI: no unit
        level=ONE_APP,
    ),
    Setting(
        "net",
        parse_network,
        "Network: none (loopback only), host, default (the sdrun0 bridge) or a network's name.",
        "net",
        # No default: the stage1's (Stage1.default_network), which the spec then carries, and
        # a unit too: another stage1 version's default may be another.
        default=None,
        level=POD,
    ),
    Setting(
        "port",
        _each(PortMapping.parse, "port"),
        "Publish a container port.",
        "ports",
        flags=("-p", "--port"),
        kind=MULTIPLE,
        metavar="[IP:]HOST:CTR[/udp]",
        level=POD,
    ),
    Setting(
        "stop_signal", parse_stop_signal, "Signal that stops the app [SIGTERM].", "stop_signal", image=IMAGE_DEFAULT
    ),
    Setting("stop_timeout", parse_seconds, "Seconds between the stop signal and SIGKILL.", "stop_timeout"),
    # The confinement of the app (Isolation): fly honours none of it, and refuses each.
    Setting(
        "hostname",
        parse_hostname,
        "Hostname inside the container [pod name].",
        "isolation.hostname",
        stage1s=NAMESPACE_AND_KVM,
        level=POD,
    ),
    Setting(
        "cap_add",
        _words("cap_add"),
        "Keep a capability beyond the default set (ALL: all).",
        "isolation.cap_add",
        kind=MULTIPLE,
        metavar="CAP",
        stage1s=NAMESPACE,
    ),
    Setting(
        "cap_drop",
        _words("cap_drop"),
        "Drop a capability of the default set (ALL: all).",
        "isolation.cap_drop",
        kind=MULTIPLE,
        metavar="CAP",
        stage1s=NAMESPACE,
    ),
    Setting(
        "seccomp",
        str,
        "Seccomp: default, unconfined or an OCI JSON profile file.",
        "isolation.seccomp",
        metavar="PROFILE",
        stage1s=NAMESPACE,  # fly takes unconfined, which is what it is (its refuse_unsupported)
    ),
    Setting(
        "private_users",
        parse_private_users,
        "User namespace.",
        "isolation.private_users",
        kind=OPTIONAL_VALUE,
        metavar="auto|UID:COUNT",
        implied="auto",
        stage1s=NAMESPACE,
    ),
    Setting(
        "read_only",
        _flag("read_only"),
        "Mount the container's root read-only.",
        "isolation.read_only",
        kind=FLAG,
        stage1s=NAMESPACE_AND_KVM,
    ),
    Setting(
        "tmpfs",
        _each(parse_tmpfs, "tmpfs"),
        "Mount a tmpfs inside the container.",
        "isolation.tmpfs",
        kind=MULTIPLE,
        metavar="PATH[:OPTS]",
        stage1s=NAMESPACE_AND_KVM,
    ),
    Setting(
        "device",
        _each(parse_device, "device"),
        "Give the app a device node of the host.",
        "isolation.device",
        kind=MULTIPLE,
        metavar="HOST[:CTR][:PERMS]",
        stage1s=NAMESPACE,
    ),
    Setting(
        "init",
        _flag("init"),
        "Run tini as PID 1: reaps zombies, forwards signals.",
        "isolation.init",
        kind=FLAG,
        stage1s=NAMESPACE_AND_KVM,
    ),
    Setting(
        "selinux_type",
        str,
        "SELinux context for the app (SELinuxContext=).",
        "isolation.selinux_type",
        stage1s=NAMESPACE,
    ),
    Setting(
        "apparmor",
        str,
        "AppArmor profile for the app (AppArmorProfile=).",
        "isolation.apparmor",
        metavar="PROFILE",
        stage1s=NAMESPACE,
    ),
    Setting(
        "add_host",
        _each(parse_add_host, "add_host"),
        "Add a line to /etc/hosts (IP host-gateway: the network's gateway).",
        "isolation.add_host",
        kind=MULTIPLE,
        metavar="NAME:IP",
        stage1s=NAMESPACE_AND_KVM,
        level=POD,
    ),
    Setting(
        "dns",
        _each(parse_dns, "dns"),
        "Nameserver of /etc/resolv.conf, instead of the host's.",
        "isolation.dns",
        kind=MULTIPLE,
        metavar="IP",
        stage1s=NAMESPACE_AND_KVM,
        level=POD,
    ),
    Setting(
        "dns_search",
        _each(parse_dns_search, "dns_search"),
        "Search domain of /etc/resolv.conf (.: none).",
        "isolation.dns_search",
        kind=MULTIPLE,
        metavar="DOMAIN",
        stage1s=NAMESPACE_AND_KVM,
        level=POD,
    ),
    Setting(
        "dns_option",
        _each(parse_dns_option, "dns_option"),
        "Option of /etc/resolv.conf, e.g. ndots:2.",
        "isolation.dns_option",
        kind=MULTIPLE,
        metavar="OPT",
        stage1s=NAMESPACE_AND_KVM,
        level=POD,
    ),
    Setting(
        "sysctl",
        _each(parse_sysctl, "sysctl"),
        "Set a namespaced sysctl: net.*, fs.mqueue.*, kernel.shm*...",
        "isolation.sysctl",
        kind=MULTIPLE,
        metavar="KEY=VALUE",
        stage1s=NAMESPACE_AND_KVM,
        level=POD,
    ),
    # How systemd runs the service (ServiceOptions); most of them only an installed unit's.
    Setting(
        "requires",
        _each(parse_name, "requires"),
        "Start after POD's unit, and only with it.",
        "service.requires",
        kind=MULTIPLE,
        metavar="POD",
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "restart_sec",
        lambda value: parse_seconds(value, "restart_sec"),
        "Seconds before a restart (RestartSec=) [0.1].",
        "service.restart_sec",
        metavar="SECONDS",
    ),
    Setting(
        "start_limit_interval",
        lambda value: parse_seconds(value, "start_limit_interval"),
        "StartLimitIntervalSec=, in seconds.",
        "service.start_limit_interval",
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "start_limit_burst",
        parse_count,
        "StartLimitBurst=.",
        "service.start_limit_burst",
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "notify",
        _flag("notify"),
        "The app says READY=1 itself (sd_notify).",
        "service.notify",
        kind=FLAG,
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "listen",
        _each(parse_listen, "listen"),
        "Socket activation: PORT, HOST:PORT or PATH.",
        "service.listen",
        kind=MULTIPLE,
        metavar="ADDRESS",
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "healthcheck",
        _words("healthcheck"),
        "A command run inside the pod; failing restarts it.",
        "service.healthcheck",
        kind=COMMAND,
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "healthcheck_interval",
        parse_seconds,
        "Seconds between health checks [30].",
        "service.healthcheck_interval",
        front_ends=frozenset({UNITS}),
    ),
    Setting(
        "wanted_by",
        _words("wanted_by"),
        "[Install] WantedBy= [multi-user.target].",
        "service.wanted_by",
        kind=MULTIPLE,
        metavar="TARGET",
        front_ends=frozenset({UNITS}),
    ),
)
SETTINGS_TABLE = with_field_defaults(SETTINGS_TABLE, {"": PodSpec, **RECORDS})
SETTINGS = by_key(SETTINGS_TABLE)


def check_settings(
    raw: Mapping[str, object], origin: str, table: Mapping[str, Setting] = SETTINGS
) -> dict[str, object]:
    """Convert raw settings through the table's rows; unknown keys and bad values name their origin.
    table: the shared settings, and those of the stage1s stage0 knows (sdrun.specbuild.all_settings)."""
    checked: dict[str, object] = {}
    for key, value in raw.items():
        if value is None or value == ():
            continue
        setting = table.get(key)
        if setting is None or setting.parse is None:
            raise SpecError(f"{origin}: unknown key '{key}'", hint=f"known keys: {', '.join(sorted(table))}")
        try:
            checked[key] = setting.parse(value)
        except SpecError as error:
            raise SpecError(f"{origin}: {error.message}") from None
    return checked


def shared_settings(raw: Mapping[str, object]) -> Mapping[str, Setting]:
    return SETTINGS


def load_spec_file(
    path: Path, table_for: Callable[[Mapping[str, object]], Mapping[str, Setting]] = shared_settings
) -> dict[str, object]:
    """A spec file's settings, checked with the table table_for gives for its keys: the shared one,
    or with the stage1s' settings too (sdrun.specbuild.settings_table)."""
    import tomllib  # only spec files need it: not worth its import time on every run

    try:
        with path.open("rb") as stream:
            raw = tomllib.load(stream)
    except OSError as error:
        raise SpecError(f"cannot read spec file '{path}': {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: invalid TOML: {error}") from None
    table = table_for(raw)
    _check_command_lists(raw, str(path), table)
    return check_settings(raw, str(path), table)


def _check_command_lists(raw: Mapping[str, object], origin: str, table: Mapping[str, Setting]) -> None:
    """A command's words (exec, healthcheck) are a TOML array in a spec file: a string would be one
    word, `exec = "echo a b"` a program 'echo a b' not found, a health check never passing. (Their
    converters take a string: a unit's `prepare` gives a one-word command as one.)"""
    for key, value in raw.items():
        setting = table.get(key)
        if setting is not None and setting.kind == COMMAND and value is not None and not isinstance(value, list):
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


def assemble_spec(
    settings: Mapping[str, Any], table: Iterable[Setting], *, name: str, stage1: str, net: str
) -> PodSpec:
    """A PodSpec of checked settings, each put where its row says, with the name, stage1 and network
    resolved (sdrun.specbuild.build_spec, which knows the stage1s' defaults)."""
    if bool(settings.get("rootfs")) == bool(settings.get("image")):
        raise SpecError("give exactly one of --rootfs DIR or an IMAGE")
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
    fields: dict[str, dict[str, Any]] = {"": {}, STAGE1_FIELD: {}, **{record: {} for record in RECORDS}}
    for setting in table:
        if setting.field is not None and setting.dest in settings:
            record, _, field = setting.field.rpartition(".")
            if setting.field == STAGE1_FIELD:
                record, field = STAGE1_FIELD, setting.dest
            fields[record][field] = settings[setting.dest]
    env = {"PATH": DEFAULT_PATH}
    for env_file in settings.get("env_file", ()):
        env |= read_env_file(env_file)
    fields["app"]["env"] = env | settings.get("env", {})
    records_ = {record: kind(**fields[record]) for record, kind in RECORDS.items()}
    top = fields[""] | {"name": settings.get("name", name), "stage1": stage1, "net": net}
    return PodSpec(**top, **records_, stage1_settings=fields[STAGE1_FIELD])
