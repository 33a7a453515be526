"""`sdrun-oci`: runc's command line, as conmon, podman, dockerd and containerd's shim call it.

Parsed by hand, not with click: every container start pays for this process's start (several
calls of it), and click's import alone costs more than the parsing does. Errors go out as runc
writes them: one line on stderr, and with --log a line in that file ({"level":"error","msg":...}
with --log-format json), whose last error line the callers report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from sdrun.errors import SdrunError, describe
from sdrun.oci import lifecycle

VERSION = "0.1.0"
SPEC_VERSION = "1.0.2"
# Each verb's flags: those that take a value, and those that do not.
VALUE_FLAGS = {
    "create": {"bundle", "b", "pid-file", "console-socket", "preserve-fds"},
    "run": {"bundle", "b", "pid-file", "console-socket", "preserve-fds"},
    "exec": {"process", "p", "pid-file", "console-socket", "preserve-fds", "cwd", "env", "e", "user", "u"},
    "ps": {"format", "f"},
    "update": {"resources", "r"},
}
BOOL_FLAGS = {
    "create": {"no-pivot", "no-new-keyring"},
    "kill": {"all", "a"},
    "delete": {"force", "f"},
    "exec": {"detach", "d", "tty", "t", "no-new-privs"},
}
USAGE = "usage: sdrun-oci [--root DIR] [--log FILE] [--log-format text|json] [--systemd-cgroup] VERB [FLAGS] ID"


class UsageError(SdrunError):
    pass


class GlobalOptions:
    def __init__(self) -> None:
        from sdrun.paths import OCI_ROOT

        self.root = OCI_ROOT
        self.log: str | None = None
        self.log_format = "text"
        self.systemd_cgroup = False
        self.debug = False


def split_flag(word: str) -> tuple[str, str | None]:
    """'--bundle=/b' as ('bundle', '/b'), '--all' as ('all', None)."""
    name, equals, value = word.lstrip("-").partition("=")
    return name, value if equals else None


def parse_globals(argv: list[str], options: GlobalOptions) -> list[str]:
    """The global flags before the verb; what remains, from the verb on."""
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        name, value = split_flag(argv[index])
        index += 1
        if name in ("root", "log", "log-format", "criu", "rootless"):
            if value is None:
                if index >= len(argv):
                    raise UsageError(f"flag --{name} needs a value")
                value = argv[index]
                index += 1
            set_global(options, name, value)
        elif name == "systemd-cgroup":
            options.systemd_cgroup = True
        elif name == "debug":
            options.debug = True
        elif name in ("version", "v"):
            return ["--version"]
        elif name in ("help", "h"):
            return ["--help"]
        else:
            raise UsageError(f"unknown global flag --{name}")
    return argv[index:]


def set_global(options: GlobalOptions, name: str, value: str) -> None:
    if name == "root":
        options.root = Path(value).absolute()
    elif name == "log":
        options.log = value
    elif name == "log-format":
        if value not in ("text", "json"):
            raise UsageError(f"--log-format {value}: expected text or json")
        options.log_format = value


def parse_verb(verb: str, argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """A verb's flags (wherever they stand, as Go's flag package after the verb does not, but
    callers put them first anyway) and its positional arguments."""
    flags: dict[str, str | bool] = {}
    positional: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if word == "--":
            positional += argv[index:]
            break
        if not word.startswith("-") or word == "-" or (positional and verb == "kill"):
            positional.append(word)
            continue
        name, value = split_flag(word)
        if name in VALUE_FLAGS.get(verb, ()):
            if value is None:
                if index >= len(argv):
                    raise UsageError(f"{verb}: flag --{name} needs a value")
                value = argv[index]
                index += 1
            flags[name] = value
        elif name in BOOL_FLAGS.get(verb, ()):
            flags[name] = value is None or value == "true"
        else:
            raise UsageError(f"{verb}: unknown flag --{name}")
    return flags, positional


def one_id(verb: str, positional: list[str], extra: int = 0) -> str:
    if not 1 <= len(positional) <= 1 + extra:
        raise UsageError(f"{verb}: expected a container ID")
    return positional[0]


def text_flag(flags: dict[str, str | bool], *names: str) -> str | None:
    for name in names:
        if isinstance(flags.get(name), str):
            return str(flags[name])
    return None


def run_verb(options: GlobalOptions, argv: list[str]) -> int:
    if not argv or argv[0] in ("--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"sdrun-oci version {VERSION}\ncommit: sdrun {VERSION}\nspec: {SPEC_VERSION}")
        return 0
    if options.debug:  # sdrun.debug's messages (mounts, machined...) on stderr
        import logging

        logging.basicConfig(level=logging.DEBUG, format="sdrun-oci: %(name)s: %(message)s")
    verb, rest = argv[0], argv[1:]
    flags, positional = parse_verb(verb, rest)
    runtime = lifecycle.Options(options.root, systemd_cgroup=options.systemd_cgroup)
    handler = VERBS.get(verb)
    if handler is None:
        raise UsageError(f"'{verb}' is not supported by sdrun-oci yet", hint="see docs/oci.md")
    return handler(runtime, flags, positional)


Flags = dict[str, str | bool]


def create_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    lifecycle.create(
        runtime,
        one_id("create", positional),
        text_flag(flags, "bundle", "b") or ".",
        text_flag(flags, "pid-file"),
        text_flag(flags, "console-socket"),
        preserved_fds(flags),
    )
    return 0


def preserved_fds(flags: Flags) -> int:
    preserve = text_flag(flags, "preserve-fds") or "0"
    if not preserve.isdigit():
        raise UsageError(f"--preserve-fds {preserve}: not a number")
    return int(preserve)


def start_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    lifecycle.start(runtime, one_id("start", positional))
    return 0


def state_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    from sdrun.oci import state

    container, record = lifecycle.open_container(runtime, one_id("state", positional), lock=False)
    print(json.dumps(state.state_document(container, record), indent=2))
    return 0


def kill_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    container_id = one_id("kill", positional, extra=1)
    signal_text = positional[1] if len(positional) > 1 else "SIGTERM"
    lifecycle.kill(runtime, container_id, signal_text, all_processes=bool(flags.get("all") or flags.get("a")))
    return 0


def delete_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    lifecycle.delete(runtime, one_id("delete", positional), force=bool(flags.get("force") or flags.get("f")))
    return 0


def ps_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    pids = lifecycle.processes(runtime, one_id("ps", positional))
    if text_flag(flags, "format", "f") == "json":
        print(json.dumps(pids))
    else:
        print("\n".join(["PID", *map(str, pids)]))
    return 0


def update_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    resources = text_flag(flags, "resources", "r")
    if resources is None:
        raise UsageError("update: only --resources FILE|- is supported yet")
    text = sys.stdin.read() if resources == "-" else Path(resources).read_text()
    lifecycle.update(runtime, one_id("update", positional), text)
    return 0


def pause_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    lifecycle.pause(runtime, one_id("pause", positional))
    return 0


def resume_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    lifecycle.resume(runtime, one_id("resume", positional))
    return 0


def features_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    print(json.dumps(features(), indent=2))
    return 0


def exec_verb(runtime: lifecycle.Options, flags: Flags, positional: list[str]) -> int:
    from sdrun.oci import execute

    process = text_flag(flags, "process", "p")
    if process is None:
        raise UsageError("exec: only --process FILE is supported yet (not a command line)")
    if len(positional) != 1:
        raise UsageError("exec: expected a container ID")
    request = execute.ExecRequest(
        process,
        detach=bool(flags.get("detach") or flags.get("d")),
        pid_file=text_flag(flags, "pid-file"),
        console_socket=text_flag(flags, "console-socket"),
        preserve_fds=preserved_fds(flags),
    )
    return execute.exec_process(runtime, positional[0], request)


def features() -> dict[str, object]:
    """The runtime spec's features document: what this runtime carries out (docs/oci.md)."""
    from sdrun.linux import caps
    from sdrun.linux.seccomp import ACTIONS, MASKED_EQ, OPERATORS
    from sdrun.oci.config import IGNORED_MOUNT_OPTIONS, MOUNT_FLAGS, NAMESPACE_FLAGS
    from sdrun.oci.hooks import RUNTIME_NAMESPACE_HOOKS

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": list(RUNTIME_NAMESPACE_HOOKS),
        "mountOptions": sorted({*MOUNT_FLAGS, *IGNORED_MOUNT_OPTIONS}),
        "linux": {
            "namespaces": sorted(NAMESPACE_FLAGS),
            "capabilities": [f"CAP_{name}" for name in caps.CAPABILITIES],
            "cgroup": {"v1": False, "v2": False, "systemd": True, "systemdUser": False},
            "seccomp": {"enabled": True, "actions": sorted(ACTIONS), "operators": [*OPERATORS, MASKED_EQ]},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {},
    }


VERBS = {
    "create": create_verb,
    "start": start_verb,
    "state": state_verb,
    "kill": kill_verb,
    "delete": delete_verb,
    "exec": exec_verb,
    "ps": ps_verb,
    "update": update_verb,
    "pause": pause_verb,
    "resume": resume_verb,
    "features": features_verb,
}


def log_error(options: GlobalOptions, message: str) -> None:
    """The error as runc logs it, in --log (the callers report its last error line)."""
    if options.log is None:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if options.log_format == "json":
        line = json.dumps({"level": "error", "msg": message, "time": stamp})
    else:
        line = f"time={json.dumps(stamp)} level=error msg={json.dumps(message)}"
    try:
        fd = os.open(options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # stderr still says it


def main(argv: list[str] | None = None) -> int:
    options = GlobalOptions()
    try:
        return run_verb(options, parse_globals(list(sys.argv[1:] if argv is None else argv), options))
    except SdrunError as error:
        message = describe(error)
        log_error(options, message)
        sys.stderr.write(f"sdrun-oci: {message}\n")
        return 2 if isinstance(error, UsageError) else 1
    except OSError as error:
        message = describe(error)
        log_error(options, message)
        sys.stderr.write(f"sdrun-oci: {message}\n")
        if options.debug:
            raise
        return 1


def entry_point() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
