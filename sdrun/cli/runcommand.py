"""`sdrun run` on the command line: its options as one table, a parser of them that needs
no click, and the verb itself.

Every container start pays for the CLI's imports, and click (with the inspect,
uuid, datetime... it pulls in) is ~20 ms of them. So `run`'s options are data:
sdrun.cli.commands builds the click command from RUN_OPTIONS (its help, its
errors, `generate` and `install`, which take the same options), and `parse`
reads the plain forms of a `run` command line with the same table. `parse`
returns None for anything it is not sure of (--help, an option it does not know,
`-dt`, a missing value, a boolean's value...): that command line goes to click,
which then words every error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sdrun.paths import Paths
    from sdrun.spec import PodSpec

DEFAULT_STAGE1 = "namespace"

# How an option takes its value, and what click makes of it.
VALUE = "value"  # --opt VALUE, a string
MULTIPLE = "multiple"  # repeatable: a tuple of strings
FLAG = "flag"  # no value: True when given
PATH = "path"  # a value, as a Path
BOOLEAN = "boolean"  # a value click reads as a boolean (yes/no, true/false, 1/0): left to click
OPTIONAL_VALUE = "optional-value"  # --opt (for `implied`) or --opt=VALUE, never --opt VALUE


class RunOption(NamedTuple):
    names: tuple[str, ...]  # ("-e", "--env"): the short and long spellings
    dest: str  # the parameter name; for a setting, its key in sdrun.spec.SETTINGS
    help: str
    kind: str = VALUE
    metavar: str | None = None
    setting: bool = True  # a spec setting; otherwise it says how to run (detached, removed, pulled)
    implied: str | None = None  # OPTIONAL_VALUE: the value when none is given


RUN_OPTIONS = (
    RunOption(("--rootfs",), "rootfs", "Run this directory as the root filesystem.", PATH),
    RunOption(("--spec",), "spec_file", "Read the spec from a TOML file.", PATH, setting=False),
    RunOption(("--name",), "name", "Pod name (unit sdrun-NAME.service) [random]."),
    RunOption(("--stage1",), "stage1", f"Isolation backend [{DEFAULT_STAGE1}]."),
    RunOption(("-d", "--detach"), "detach", "Start and return; print the pod UUID.", FLAG, setting=False),
    RunOption(("--rm",), "remove", "Remove the pod when the app ends.", FLAG, setting=False),
    RunOption(("-i", "--interactive"), "interactive", "Give the app this command's stdin.", FLAG, setting=False),
    RunOption(("-t", "--tty"), "tty", "Give the app a terminal, relayed to this one.", FLAG, setting=False),
    RunOption(("--replace",), "replace", "Remove a pod of the same name first.", FLAG, setting=False),
    RunOption(("--scope",), "scope", "Run as our child in a transient scope, on this terminal.", FLAG),
    RunOption(("-e", "--env"), "env", "Set an environment variable.", MULTIPLE, "KEY=VALUE"),
    RunOption(("--env-file",), "env_file", "Read KEY=VALUE lines from FILE.", MULTIPLE, "FILE"),
    RunOption(("-w", "--workdir"), "workdir", "Working directory inside the container."),
    RunOption(("-u", "--user"), "user", "USER[:GROUP], names or numbers from the container's /etc/passwd."),
    RunOption(("--memory",), "memory", "Memory limit (MemoryMax=), e.g. 256M."),
    RunOption(("--cpus",), "cpus", "CPU limit in CPUs (CPUQuota=), e.g. 0.5."),
    RunOption(("--pids-limit",), "pids_limit", "Maximum number of tasks (TasksMax=)."),
    RunOption(("--ulimit",), "ulimit", "Resource limit, e.g. nofile=1024.", MULTIPLE, "NAME=SOFT[:HARD]"),
    RunOption(("--restart",), "restart", "Restart policy: no, on-failure or always."),
    RunOption(("--restart-sec",), "restart_sec", "Seconds before a restart (RestartSec=) [0.1].", metavar="SECONDS"),
    RunOption(
        ("-v", "--volume"),
        "volume",
        "Bind a host path into the container; OPTIONS: ro or rw, and U or idmap.",
        MULTIPLE,
        "HOST:CTR[:OPTIONS]",
    ),
    RunOption(("--label",), "label", "Attach a label to the pod.", MULTIPLE, "KEY=VALUE"),
    RunOption(
        ("--net",), "net", "Network: none (loopback only), host, default (the sdrun0 bridge) or a network's name."
    ),
    RunOption(("-p", "--port"), "port", "Publish a container port.", MULTIPLE, "[IP:]HOST:CTR[/udp]"),
    RunOption(("--stop-signal",), "stop_signal", "Signal that stops the app [SIGTERM]."),
    RunOption(("--stop-timeout",), "stop_timeout", "Seconds between the stop signal and SIGKILL."),
    RunOption(("--hostname",), "hostname", "Hostname inside the container [pod name]."),
    RunOption(
        ("--add-host",),
        "add_host",
        "Add a line to /etc/hosts (IP host-gateway: the network's gateway).",
        MULTIPLE,
        "NAME:IP",
    ),
    RunOption(("--dns",), "dns", "Nameserver of /etc/resolv.conf, instead of the host's.", MULTIPLE, "IP"),
    RunOption(("--dns-search",), "dns_search", "Search domain of /etc/resolv.conf (.: none).", MULTIPLE, "DOMAIN"),
    RunOption(("--dns-option",), "dns_option", "Option of /etc/resolv.conf, e.g. ndots:2.", MULTIPLE, "OPT"),
    RunOption(
        ("--sysctl",), "sysctl", "Set a namespaced sysctl: net.*, fs.mqueue.*, kernel.shm*...", MULTIPLE, "KEY=VALUE"
    ),
    RunOption(("--cap-add",), "cap_add", "Keep a capability beyond the default set (ALL: all).", MULTIPLE, "CAP"),
    RunOption(("--cap-drop",), "cap_drop", "Drop a capability of the default set (ALL: all).", MULTIPLE, "CAP"),
    RunOption(
        ("--seccomp",), "seccomp", "Seccomp: default, unconfined or an OCI JSON profile file.", metavar="PROFILE"
    ),
    RunOption(
        ("--private-users",), "private_users", "User namespace.", OPTIONAL_VALUE, "auto|UID:COUNT", implied="auto"
    ),
    RunOption(("--read-only",), "read_only", "Mount the container's root read-only.", FLAG),
    RunOption(("--tmpfs",), "tmpfs", "Mount a tmpfs inside the container.", MULTIPLE, "PATH[:OPTS]"),
    RunOption(("--device",), "device", "Give the app a device node of the host.", MULTIPLE, "HOST[:CTR][:PERMS]"),
    RunOption(("--init",), "init", "Run tini as PID 1: reaps zombies, forwards signals.", FLAG),
    RunOption(("--selinux-type",), "selinux_type", "SELinux context for the app (SELinuxContext=)."),
    RunOption(("--apparmor",), "apparmor", "AppArmor profile for the app (AppArmorProfile=).", metavar="PROFILE"),
    RunOption(
        ("--kvm-accel",),
        "kvm_accel",
        "kvm stage1: accelerator [auto: KVM if it boots, else TCG].",
        metavar="kvm|tcg|auto",
    ),
    RunOption(
        ("--kvm-kernel",),
        "kvm_kernel",
        "kvm stage1: guest kernel [newest /boot/vmlinuz-*-cloud-amd64].",
        metavar="PATH",
    ),
    RunOption(
        ("--entrypoint",),
        "entrypoint",
        "Image pods: run CMD instead of the image's entrypoint and command.",
        metavar="CMD",
    ),
    RunOption(
        ("--platform",),
        "platform",
        "Image pods: the platform to pull, if absent [host's].",
        metavar="OS/ARCH[/VARIANT]",
        setting=False,
    ),
    RunOption(("--tls-verify",), "tls_verify", "Image pods: as for 'sdrun image pull'.", BOOLEAN, setting=False),
    RunOption(
        ("--verify",),
        "verify",
        "Image pods: pull only what a digest pins, as 'image pull --verify'.",
        FLAG,
        setting=False,
    ),
    RunOption(
        ("--signature-policy",),
        "signature_policy",
        "Image pods: the signature policy of a pull [/etc/containers/policy.json, if any].",
        PATH,
        setting=False,
    ),
    RunOption(
        ("--registries.d",),
        "registries_d",
        "Image pods: where a pull looks up signatures [/etc/containers/registries.d].",
        PATH,
        setting=False,
    ),
)
OPTIONS_BY_NAME = {name: option for option in RUN_OPTIONS for name in option.names}
FAST_KINDS = (VALUE, MULTIPLE, FLAG, PATH, OPTIONAL_VALUE)


class RunCommandLine(NamedTuple):
    """A `sdrun [--root DIR] run OPTIONS [IMAGE] [--] [CMD...]` command line, read."""

    root: str | None  # --root before `run`
    options: dict[str, Any]  # the options given, by dest, their values as click would give them
    args: tuple[str, ...]  # IMAGE and CMD..., as click's nargs=-1 argument would have them


def parse(argv: Sequence[str]) -> RunCommandLine | None:
    """Read `sdrun` argv (without argv[0]) if it is a plain `run` command line; None if not."""
    root, position = _group_options(argv)
    if position is None or position >= len(argv) or argv[position] != "run":
        return None
    options: dict[str, Any] = {}
    index = position + 1
    while index < len(argv):
        token = argv[index]
        if token == "--":  # before any argument: the parser's own, dropped
            return RunCommandLine(root, options, tuple(argv[index + 1 :]))
        if not token.startswith("-") or token == "-":  # the first argument ends the options
            break
        consumed = _option(token, argv[index + 1 : index + 2], options)
        if consumed is None:
            return None
        index += consumed
    return RunCommandLine(root, options, tuple(argv[index:]))


def _group_options(argv: Sequence[str]) -> tuple[str | None, int | None]:
    """The --root given before the verb, and where the verb is; None if anything else comes first."""
    root, index = None, 0
    while index < len(argv) and argv[index].startswith("--root"):
        name, equals, value = argv[index].partition("=")
        if name != "--root":
            return None, None
        if not equals:
            if index + 1 >= len(argv):
                return None, None
            index, value = index + 1, argv[index + 1]
        root, index = value, index + 1
    return root, index


def _option(token: str, following: Sequence[str], options: dict[str, Any]) -> int | None:
    """Record one option from token (and the token after it, for a value); how many tokens it took."""
    name, equals, value = token.partition("=") if token.startswith("--") else (token, "", "")
    option = OPTIONS_BY_NAME.get(name)
    if option is None or option.kind not in FAST_KINDS:
        return None
    if option.kind == FLAG:
        if equals:
            return None
        options[option.dest] = True
        return 1
    if option.kind == OPTIONAL_VALUE:
        options[option.dest] = value if equals else option.implied
        return 1
    taken = 1
    if not equals:
        if not following:
            return None
        value, taken = following[0], 2
    if option.kind == MULTIPLE:
        options[option.dest] = (*options.get(option.dest, ()), value)
    else:
        options[option.dest] = Path(value) if option.kind == PATH else value
    return taken


# --- the verb ---


def without_separator(args: tuple[str, ...]) -> tuple[str, ...]:
    """Click keeps a `--` that follows a positional argument (POD -- CMD, IMAGE -- CMD): drop it."""
    return args[1:] if args[:1] == ("--",) else args


def spec_from_run_options(
    spec_file: Path | None, args: tuple[str, ...], given: Mapping[str, Any], default_name: str | None = None
) -> PodSpec:
    """The spec `run` options describe (also for `generate` and `install`): the settings given
    on the command line override the spec file's."""
    from sdrun.spec import build_spec, check_settings, load_spec_file

    settings: dict[str, object] = load_spec_file(spec_file) if spec_file else {}
    settings |= check_settings(given, "command line")
    if not settings.get("rootfs") and args:
        settings["image"], args = args[0], args[1:]
    args = without_separator(args)
    if args:
        settings["exec"] = tuple(args)
    default_name = default_name or f"pod-{os.urandom(4).hex()}"
    return build_spec(settings, default_name=default_name, default_stage1=DEFAULT_STAGE1)


def run_verb(paths: Paths, options: Mapping[str, Any], args: tuple[str, ...]) -> int:
    """`sdrun run` with the options given (by dest) and its arguments: run the pod, return the
    exit status."""
    from sdrun import run as running
    from sdrun.errors import SdrunError
    from sdrun.image.pullsettings import PullSettings

    given = {option.dest: options[option.dest] for option in RUN_OPTIONS if option.setting and option.dest in options}
    spec = spec_from_run_options(options.get("spec_file"), args, given)
    pull = PullSettings(
        options.get("platform"),
        options.get("tls_verify"),
        bool(options.get("verify")),
        options.get("signature_policy"),
        options.get("registries_d"),
    )
    if pull != PullSettings() and not spec.image:
        raise SdrunError("--platform, --tls-verify, --verify, --signature-policy and --registries.d are for image pods")
    run_options = running.RunOptions(
        detach=bool(options.get("detach")),
        remove=bool(options.get("remove")),
        pull=pull,
        replace=bool(options.get("replace")),
        interactive=bool(options.get("interactive")),
        tty=bool(options.get("tty")),
    )
    return running.run(paths, spec, run_options, sys.stdout.buffer)
