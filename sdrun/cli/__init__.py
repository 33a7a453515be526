"""The `sdrun` command line: thin verbs over the library, and the one place errors are printed."""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

import click
from click.core import ParameterSource

from sdrun import manage
from sdrun.errors import EXIT_RUNTIME_ERROR, NotFound, SdrunError
from sdrun.net import pod_address
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore
from sdrun.spec import SETTINGS, PodSpec, build_spec, check_settings, load_spec_file

if TYPE_CHECKING:
    from sdrun.systemd.bus import Systemd

T = TypeVar("T")
DEFAULT_STAGE1 = "namespace"
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Context(NamedTuple):
    paths: Paths
    debug: bool

    @property
    def store(self) -> PodStore:
        return PodStore(self.paths)


def die(message: str, hint: str | None = None, exit_code: int = EXIT_RUNTIME_ERROR) -> NoReturn:
    click.echo(f"sdrun: {message}" + (f" (hint: {hint})" if hint else ""), err=True)
    sys.exit(exit_code)


class SdrunGroup(click.Group):
    """Turns SdrunError into one line on stderr; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SdrunError as error:
            if _debugging(ctx):
                raise
            die(error.message, error.hint, error.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:  # `sdrun list | head`: the reader left; say nothing more, as cat would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + 13)  # SIGPIPE
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except Exception as error:
            if _debugging(ctx):
                raise
            die(f"internal error: {type(error).__name__}: {error}", "run with --debug for the traceback")


def _debugging(ctx: click.Context) -> bool:
    return isinstance(ctx.obj, Context) and ctx.obj.debug


def without_separator(args: tuple[str, ...]) -> tuple[str, ...]:
    """Click keeps a `--` that follows a positional argument (POD -- CMD, IMAGE -- CMD): drop it."""
    return args[1:] if args[:1] == ("--",) else args


def with_systemd(action: Callable[[Systemd], T]) -> T:
    """Run action with a connection to systemd, closed afterwards."""
    from sdrun.systemd.bus import Systemd

    systemd = Systemd.connect()
    try:
        return action(systemd)
    finally:
        systemd.close()


@click.group(cls=SdrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(path_type=Path), envvar="SDRUN_ROOT", help="State directory [/var/lib/sdrun].")
@click.option("--debug", is_flag=True, help="Show tracebacks and what each step does.")
@click.pass_context
def main(ctx: click.Context, root: Path | None, debug: bool) -> None:
    """sdrun: containers as systemd units, with no daemon of their own."""
    if debug:
        import logging

        logging.basicConfig(format="sdrun: %(message)s")
        logging.getLogger("sdrun").setLevel(logging.DEBUG)  # ours only: pyroute2 is chatty
    ctx.obj = Context(Paths.from_env(root), debug)


pass_context = click.make_pass_decorator(Context)


# --- run ---

RUN_FLAGS: Mapping[str, str] = {  # click parameter -> spec setting
    "name": "name",
    "stage1": "stage1",
    "rootfs": "rootfs",
    "env": "env",
    "env_file": "env_file",
    "workdir": "workdir",
    "user": "user",
    "memory": "memory",
    "cpus": "cpus",
    "pids_limit": "pids_limit",
    "ulimit": "ulimit",
    "restart": "restart",
    "volume": "volume",
    "label": "label",
    "scope": "scope",
    "net": "net",
    "port": "port",
    "stop_signal": "stop_signal",
    "stop_timeout": "stop_timeout",
    "hostname": "hostname",
    "cap_add": "cap_add",
    "cap_drop": "cap_drop",
    "seccomp": "seccomp",
    "private_users": "private_users",
    "read_only": "read_only",
    "tmpfs": "tmpfs",
    "init": "init",
    "selinux_type": "selinux_type",
    "apparmor": "apparmor",
    "kvm_accel": "kvm_accel",
    "kvm_kernel": "kvm_kernel",
    "entrypoint": "entrypoint",
}
assert set(RUN_FLAGS.values()) <= set(SETTINGS)


@main.command(context_settings={"allow_interspersed_args": False})
@click.option("--rootfs", type=click.Path(path_type=Path), help="Run this directory as the root filesystem.")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="Read the spec from a TOML file.")
@click.option("--name", help="Pod name (unit sdrun-NAME.service) [random].")
@click.option("--stage1", help=f"Isolation backend [{DEFAULT_STAGE1}].")
@click.option("-d", "--detach", is_flag=True, help="Start and return; print the pod UUID.")
@click.option("--rm", "remove", is_flag=True, help="Remove the pod when the app ends.")
@click.option("--scope", is_flag=True, default=None, help="Run as our child in a transient scope, on this terminal.")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable.")
@click.option("--env-file", multiple=True, metavar="FILE", help="Read KEY=VALUE lines from FILE.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="USER[:GROUP], names or numbers from the container's /etc/passwd.")
@click.option("--memory", help="Memory limit (MemoryMax=), e.g. 256M.")
@click.option("--cpus", help="CPU limit in CPUs (CPUQuota=), e.g. 0.5.")
@click.option("--pids-limit", help="Maximum number of tasks (TasksMax=).")
@click.option("--ulimit", multiple=True, metavar="NAME=SOFT[:HARD]", help="Resource limit, e.g. nofile=1024.")
@click.option("--restart", help="Restart policy: no, on-failure or always.")
@click.option("-v", "--volume", multiple=True, metavar="HOST:CTR[:ro]", help="Bind a host path into the container.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Attach a label to the pod.")
@click.option("--net", help="Network: none (loopback only), host, default (the sdrun0 bridge) or a network's name.")
@click.option("-p", "--port", multiple=True, metavar="[IP:]HOST:CTR[/udp]", help="Publish a container port.")
@click.option("--stop-signal", help="Signal that stops the app [SIGTERM].")
@click.option("--stop-timeout", help="Seconds between the stop signal and SIGKILL.")
@click.option("--hostname", help="Hostname inside the container [pod name].")
@click.option("--cap-add", multiple=True, metavar="CAP", help="Keep a capability beyond the default set (ALL: all).")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability of the default set (ALL: all).")
@click.option("--seccomp", metavar="PROFILE", help="Seccomp: default, unconfined or an OCI JSON profile file.")
@click.option("--private-users", is_flag=False, flag_value="auto", metavar="auto|UID:COUNT", help="User namespace.")
@click.option("--read-only", is_flag=True, default=None, help="Mount the container's root read-only.")
@click.option("--tmpfs", multiple=True, metavar="PATH[:OPTS]", help="Mount a tmpfs inside the container.")
@click.option("--init", is_flag=True, default=None, help="Run tini as PID 1: reaps zombies, forwards signals.")
@click.option("--selinux-type", help="SELinux context for the app (SELinuxContext=).")
@click.option("--apparmor", metavar="PROFILE", help="AppArmor profile for the app (AppArmorProfile=).")
@click.option("--kvm-accel", metavar="kvm|tcg|auto", help="kvm stage1: accelerator [auto: KVM if it boots, else TCG].")
@click.option("--kvm-kernel", metavar="PATH", help="kvm stage1: guest kernel [newest /boot/vmlinuz-*-cloud-amd64].")
@click.option("--entrypoint", metavar="CMD", help="Image pods: run CMD instead of the image's entrypoint and command.")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Image pods: the platform to pull, if absent [host's].")
@click.option("--tls-verify", type=click.BOOL, default=None, help="Image pods: as for 'sdrun image pull'.")
@click.option("--verify", is_flag=True, help="Image pods: pull only what a digest pins, as 'image pull --verify'.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    click_ctx: click.Context,
    /,
    spec_file: Path | None,
    detach: bool,
    remove: bool,
    platform: str | None,
    tls_verify: bool | None,
    verify: bool,
    args: tuple[str, ...],
    **flags: Any,
) -> None:
    """Run a container: sdrun run [OPTIONS] (--rootfs DIR | IMAGE) [-- CMD ARGS...]"""
    from sdrun import run as running
    from sdrun.image.pullsettings import PullSettings

    ctx: Context = click_ctx.obj
    spec = spec_from_run_options(click_ctx, spec_file, args, flags)
    if (platform or tls_verify is not None or verify) and not spec.image:
        raise SdrunError("--platform, --tls-verify and --verify are for image pods")
    pull = PullSettings(platform, tls_verify, verify)
    options = running.RunOptions(detach=detach, remove=remove, pull=pull)
    sys.exit(running.run(ctx.paths, spec, options, sys.stdout.buffer))


def spec_from_run_options(
    click_ctx: click.Context,
    spec_file: Path | None,
    args: tuple[str, ...],
    flags: Mapping[str, Any],
    default_name: str | None = None,
) -> PodSpec:
    """The spec `run` options describe (also for `generate` and `install`): flags override the spec file."""
    settings: dict[str, object] = load_spec_file(spec_file) if spec_file else {}
    given = {
        RUN_FLAGS[name]: value
        for name, value in flags.items()
        if click_ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    settings |= check_settings(given, "command line")
    if not settings.get("rootfs") and args:
        settings["image"], args = args[0], args[1:]
    args = without_separator(args)
    if args:
        settings["exec"] = tuple(args)
    default_name = default_name or f"pod-{os.urandom(4).hex()}"
    return build_spec(settings, default_name=default_name, default_stage1=DEFAULT_STAGE1)


# --- inspecting ---


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_pods(ctx: Context, as_json: bool) -> None:
    """List pods and their state."""

    pod_views = with_systemd(lambda systemd: manage.views(systemd, ctx.store.all()))
    if as_json:
        click.echo(json.dumps([pod_view.to_json() for pod_view in pod_views], indent=2))
        return
    rows = [("UUID", "NAME", "STATE", "STAGE1", "SOURCE", "IP", "PORTS", "COMMAND")]
    for pod_view in pod_views:
        spec = pod_view.pod.spec
        state = pod_view.state
        if (record := pod_view.pod.exit_record()) is not None and state in ("exited", "failed"):
            state = f"{state} ({record.exit_status})"
        source = spec.image or spec.rootfs or ""
        address, ports = pod_address(pod_view.pod) or "", ",".join(map(str, spec.ports))
        command = " ".join(spec.app.argv)
        rows.append((pod_view.pod.uuid[:8], spec.name, state, spec.stage1, source, address, ports, command))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@main.command()
@click.argument("pod_ref", metavar="POD")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def status(ctx: Context, pod_ref: str, as_json: bool) -> None:
    """Show a pod's state, unit and exit status."""
    pod = ctx.store.get(pod_ref)
    details = with_systemd(lambda systemd: manage.status_details(systemd, pod))
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if value not in (None, {}, []):
            click.echo(f"{key}: {value}")


# --- changing ---


@main.command()
@click.argument("pod_ref", metavar="POD")
@pass_context
def stop(ctx: Context, pod_ref: str) -> None:
    """Stop a pod: systemd sends the stop signal, then SIGKILL after the timeout."""
    pod = ctx.store.get(pod_ref)
    with_systemd(lambda systemd: manage.stop(systemd, pod))
    click.echo(pod.name)


@main.command()
@click.option("-s", "--signal", "signal_name", default="KILL", show_default=True, help="Signal name or number.")
@click.argument("pod_ref", metavar="POD")
@pass_context
def kill(ctx: Context, signal_name: str, pod_ref: str) -> None:
    """Send a signal to every process of a pod."""
    pod = ctx.store.get(pod_ref)
    with_systemd(lambda systemd: manage.kill(systemd, pod, signal_name))
    click.echo(pod.name)


@main.command()
@click.option("-f", "--force", is_flag=True, help="Kill the pod first if it is running.")
@click.argument("pod_refs", metavar="POD...", nargs=-1, required=True)
@pass_context
def rm(ctx: Context, force: bool, pod_refs: tuple[str, ...]) -> None:
    """Remove pods and everything they left on the host."""
    pods = [ctx.store.get(ref) for ref in pod_refs]

    def remove_all(systemd: Systemd) -> None:
        for pod in pods:
            manage.remove(systemd, ctx.store, pod, force=force)
            click.echo(pod.name)

    with_systemd(remove_all)


@main.command()
@pass_context
def gc(ctx: Context) -> None:
    """Remove every pod that has ended, and what interrupted runs left behind."""
    for removed in with_systemd(lambda systemd: manage.gc(systemd, ctx.store)):
        click.echo(f"removed {removed}")


@main.command(context_settings={"allow_interspersed_args": False})
@click.argument("pod_ref", metavar="POD")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_context
def enter(ctx: Context, pod_ref: str, command: tuple[str, ...]) -> None:
    """Run a command inside a running pod [/bin/sh]."""
    pod = ctx.store.get(pod_ref)
    argv = list(without_separator(command)) or ["/bin/sh"]
    sys.exit(with_systemd(lambda systemd: manage.enter(systemd, pod, argv)))


# --- logs ---


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=click.IntRange(min=0), help="Show only the last N lines.")
@click.option("--since", metavar="TIME", help="Lines from TIME: 2024-05-01[T12:00[:00]], or 10m, 2h, 1d ago.")
@click.option("--until", metavar="TIME", help="Lines up to TIME (same forms as --since).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: every journal field.")
@click.option("--all", "all_pods", is_flag=True, help="The lines of every pod, each after its pod's name.")
@click.argument("pod_ref", metavar="POD", required=False)
@pass_context
def logs(
    ctx: Context,
    follow: bool,
    lines: int | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    all_pods: bool,
    pod_ref: str | None,
) -> None:
    """Print a pod's output from the journal (also for removed pods, by UUID)."""
    from sdrun.systemd import journal

    if bool(pod_ref) == all_pods:
        raise SdrunError("give one POD, or --all")
    names_by_uuid: Mapping[str, str] | None = None  # --all: each line after its pod's name
    if all_pods:  # every pod of this root, removed ones too
        names_by_uuid = {pod.uuid: pod.name for pod in ctx.store.all()}
        log = journal.PodJournal.of_root(str(ctx.paths.root))
        pod = None
    else:
        pod = _pod_or_none(ctx, str(pod_ref))
        log = journal.PodJournal(pod.uuid if pod else str(pod_ref))
    until_usec = _journal_time(until) if until else None
    if since:
        log.seek_realtime(_journal_time(since))
    elif lines is not None:
        log.seek_last(lines)
    else:
        log.seek_head()
    read = log.entries_with_fields if (as_json or all_pods) else log.entries
    first = read(until_usec)
    if since and lines is not None:  # the last N of those since TIME, as journalctl -n with --since
        first = iter(collections.deque(first, maxlen=lines))
    render = functools.partial(_log_line, as_json=as_json, names=names_by_uuid)
    _print_entries(first, render)
    if follow:
        _follow_logs(log, lambda: read(until_usec), render, until_usec, pod)


def _print_entries(entries: Iterable[Any], render: Callable[[Any], bytes]) -> None:
    out = sys.stdout.buffer
    for entry in entries:
        out.write(render(entry) + b"\n")
    out.flush()


def _follow_logs(
    log: Any, new_entries: Callable[[], Iterable[Any]], render: Callable[[Any], bytes], until_usec: int | None,
    pod: Pod | None,
) -> None:  # fmt: skip
    """Print new lines as they come; for one pod, until it has ended (a restarting pod has not:
    its unit says), or until --until has passed."""
    import time

    from sdrun.systemd import journal
    from sdrun.systemd.bus import Systemd

    systemd = Systemd.connect() if pod is not None else None
    while True:
        log.wait(1_000_000)
        _print_entries(new_entries(), render)
        if until_usec is not None and time.time() * 1_000_000 > until_usec:
            return
        if pod is not None and systemd is not None and not manage.view(systemd, pod).running:
            journal.synchronize()  # journald answers once it has written the pod's last lines
            log.refresh()
            _print_entries(new_entries(), render)
            return


def _log_line(entry: Any, *, as_json: bool, names: Mapping[str, str] | None) -> bytes:
    if as_json:
        fields = {
            key: value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            for key, value in entry.fields.items()
        }
        return json.dumps({"__REALTIME_TIMESTAMP": str(entry.realtime_usec), **fields}, sort_keys=True).encode()
    if names is not None:  # a removed pod's name is the journal's SYSLOG_IDENTIFIER
        pod_uuid = _text(entry.fields.get("SDRUN_POD", b""))
        name = names.get(pod_uuid) or _text(entry.fields.get("SYSLOG_IDENTIFIER", b"")) or pod_uuid[:8]
        return name.encode() + b" | " + bytes(entry.message)
    return bytes(entry.message)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _journal_time(text: str) -> int:
    """Microseconds since the epoch: an ISO 8601 time (local), or a span ago (30s, 10m, 2h, 1d)."""
    import time
    from datetime import datetime

    spans = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    span = text.strip().removesuffix(" ago").removeprefix("-")
    if span[:-1].isdigit() and span[-1:] in spans:
        return round((time.time() - int(span[:-1]) * spans[span[-1]]) * 1_000_000)
    try:
        return round(datetime.fromisoformat(text).timestamp() * 1_000_000)
    except ValueError:
        raise SdrunError(f"invalid time '{text}': expected e.g. 2024-05-01T12:00, 10m or 2h") from None


def _pod_or_none(ctx: Context, ref: str) -> Pod | None:
    """The pod ref names; None for the UUID of a removed one, whose lines the journal keeps."""
    try:
        return ctx.store.get(ref)
    except NotFound:
        if UUID_PATTERN.fullmatch(ref):
            return None
        raise


def entry_point() -> None:
    """The `sdrun` command. It leaves with os._exit once its output is flushed: tearing down the
    interpreter (click, dbus-next and the rest) costs ~33 ms per command and does nothing a
    command needs, since every `with` and `finally` has run by then."""
    try:
        main(prog_name="sdrun")
        status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    if "logging" in sys.modules:  # --debug, or a library, imported it: flush its handlers
        import logging

        logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = 120  # what the interpreter itself exits with when it cannot flush them
    os._exit(status)


def _exit_status(code: object) -> int:
    """As the interpreter turns SystemExit's code into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


from sdrun.cli import image as _image  # noqa: E402,F401
from sdrun.cli import network as _network  # noqa: E402,F401
from sdrun.cli import units as _units  # noqa: E402,F401
