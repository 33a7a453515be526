"""The `sdrun` command line in click: thin verbs over the library. A plain `sdrun run` is read
without click (sdrun.cli.runcommand); every other command line comes here."""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import click
from click.core import ParameterSource

from sdrun import manage
from sdrun import settings as setting_kinds
from sdrun.cli import die, errors_reported, runcommand
from sdrun.cli.runcommand import without_separator
from sdrun.errors import NotFound, SdrunError
from sdrun.net import pod_address
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore

if TYPE_CHECKING:
    from sdrun.settings import Setting
    from sdrun.systemd.bus import Systemd

T = TypeVar("T")


class Context(NamedTuple):
    paths: Paths
    debug: bool

    @property
    def store(self) -> PodStore:
        return PodStore(self.paths)


class SdrunCommand(click.Command):
    """A command whose command line, if click cannot read it, fails as any bad input does."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with usage_errors_reported(ctx):
            return super().parse_args(ctx, explicit_values(self, args, interspersed=ctx.allow_interspersed_args))


class ValueAfterEquals(click.Option):
    """An option whose value may be left out, and so is given only as --opt=VALUE: click would
    take the token after a bare --private-users for its value, the image say."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None or not self.metavar:
            return record
        names, text = record
        return names.replace(f" {self.metavar}", f"[={self.metavar}]"), text  # --private-users[=auto|UID:COUNT]


def explicit_values(command: click.Command, args: list[str], *, interspersed: bool) -> list[str]:
    """args with each bare ValueAfterEquals option given its implied value after '='."""
    options = {name: param for param in command.params if isinstance(param, click.Option) for name in param.opts}

    def takes_value(option: click.Option | None) -> bool:
        return option is not None and not option.is_flag and not option.count

    result, index = list(args), 0
    while index < len(result) and result[index] != "--":
        token = result[index]
        option = options.get(token)  # a long option without '=', or one short option alone
        if not token.startswith("-") or token == "-":
            if not interspersed:
                break
        elif isinstance(option, ValueAfterEquals):
            result[index] = f"{token}={option.flag_value}"
        elif takes_value(option):
            index += 1  # its value, whatever it looks like
        elif option is None and not token.startswith("--"):  # short options run together: -dp 8080:80
            takers = [place for place, letter in enumerate(token[1:]) if takes_value(options.get(f"-{letter}"))]
            if takers and takers[0] == len(token) - 2:
                index += 1  # the last letter's value is the next token (an earlier one's, the rest of this one)
        index += 1
    return result


class SdrunGroup(SdrunCommand, click.Group):
    """Turns SdrunError, and click's own usage errors, into one line on stderr; tracebacks only
    with --debug. Its commands are SdrunCommands, its subgroups (image, network) SdrunGroups."""

    command_class = SdrunCommand
    group_class = type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A group given no command is a usage error like any other: left to click, it prints its
        # whole help on stderr and exits 2 (click >= 8.2), or on stdout with 0 (8.1).
        super().__init__(*args, **{"no_args_is_help": False, **kwargs})

    def invoke(self, ctx: click.Context) -> Any:
        with usage_errors_reported(ctx), errors_reported(debug=_debugging(ctx), passed_on=CLICK_EXITS):
            return super().invoke(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and cmd_name in TAKE_RUN_OPTIONS:
            add_stage1_options(command)
        return command


TAKE_RUN_OPTIONS = ("run", "generate", "install")


# How click itself leaves (--help, a usage error, ^C at a prompt): usage_errors_reported words
# the usage errors; click prints the others.
CLICK_EXITS = (click.exceptions.Exit, click.ClickException, click.exceptions.Abort)


@contextlib.contextmanager
def usage_errors_reported(ctx: click.Context) -> Iterator[None]:
    """A command line click cannot read (an unknown option or command, a missing or bad value)
    is one line and exit status 125, not click's usage block and 2. No traceback with --debug:
    it is no bug. ctx names the command for the hint when click's parser did not."""
    try:
        yield
    except click.UsageError as error:
        command_path = (error.ctx or ctx).command_path
        die(" ".join(error.format_message().splitlines()), hint=f"'{command_path} --help'")


def _debugging(ctx: click.Context) -> bool:
    return isinstance(ctx.obj, Context) and ctx.obj.debug


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
@click.version_option(package_name="sdrun", message="%(prog)s version %(version)s", prog_name="sdrun")
@click.pass_context
def main(ctx: click.Context, root: Path | None, debug: bool) -> None:
    """sdrun: containers as systemd units, with no daemon of their own."""
    if debug:
        import logging

        logging.basicConfig(format="sdrun: %(message)s")
        logging.getLogger("sdrun").setLevel(logging.DEBUG)  # ours only: other libraries' are chatty
    ctx.obj = Context(Paths.from_env(root), debug)


pass_context = click.make_pass_decorator(Context)


# --- run ---


def run_option(option: Setting) -> Callable[[click.Command], click.Command]:
    """The click option for one row of the settings table (or of runcommand.RUN_OPTIONS)."""
    kinds: dict[str, dict[str, Any]] = {
        setting_kinds.VALUE: {},
        setting_kinds.COMMAND: {},  # the words are split by the verb (sdrun.cli.units)
        setting_kinds.MULTIPLE: {"multiple": True},
        setting_kinds.FLAG: {"is_flag": True, "default": None if option.spec else False},
        setting_kinds.PATH: {"type": click.Path(path_type=Path)},
        setting_kinds.BOOLEAN: {"type": click.BOOL, "default": None},
        setting_kinds.OPTIONAL_VALUE: {"is_flag": False, "flag_value": option.implied, "cls": ValueAfterEquals},
    }
    return click.option(*option.names, option.dest, help=option.help, metavar=option.metavar, **kinds[option.kind])


def click_options(options: Iterable[Setting]) -> list[click.Parameter]:
    """The click options of rows of the settings table, in their order."""
    probe = click.Command("probe")
    for option in options:
        run_option(option)(probe)  # on a command (not a function), click appends the option
    return probe.params


# The commands that take run's options, and so the stage1s' own settings too: those are added
# when the command is looked up (SdrunGroup.get_command), since finding them imports every stage1.
STAGE1_OPTIONS_ADDED: set[str] = set()


def add_stage1_options(command: click.Command) -> click.Command:
    """Give a command that takes run's options the stage1s' own settings as options too (once)."""
    if command.name not in STAGE1_OPTIONS_ADDED:
        STAGE1_OPTIONS_ADDED.add(str(command.name))
        arguments = [param for param in command.params if isinstance(param, click.Argument)]
        options = [param for param in command.params if not isinstance(param, click.Argument)]
        command.params = [*options, *click_options(runcommand.stage1_options()), *arguments]
    return command


def given_options(click_ctx: click.Context, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options the command line (or the environment) gave, without click's defaults."""
    sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name: value for name, value in options.items() if click_ctx.get_parameter_source(name) in sources}


def with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(runcommand.RUN_OPTIONS):
        command = run_option(option)(command)  # type: ignore[arg-type]
    return command


@main.command(context_settings={"allow_interspersed_args": False})
@with_run_options
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(click_ctx: click.Context, /, args: tuple[str, ...], **options: Any) -> None:
    """Run a container: sdrun run [OPTIONS] (--rootfs DIR | IMAGE) [-- CMD ARGS...]"""
    ctx: Context = click_ctx.obj
    sys.exit(runcommand.run_verb(ctx.paths, given_options(click_ctx, options), args))


# --- inspecting ---


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print the pods' UUIDs only.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE", help="name, id, label, state, stage1.")
@click.option("--format", "template", metavar="json|TEMPLATE", help="JSON, or a line per pod: '{{.Name}} {{.State}}'.")
@pass_context
def list_pods(ctx: Context, as_json: bool, quiet: bool, filters: tuple[str, ...], template: str | None) -> None:
    """List pods and their state."""
    selected = pod_filter(filters)
    pod_views = with_systemd(lambda systemd: manage.views(systemd, ctx.store.all()))
    if filters:
        pod_views = [pod_view for pod_view in pod_views if selected(pod_view.to_json())]
    if quiet or template not in (None, "json"):
        for pod_view in pod_views:
            click.echo(pod_view.pod.uuid if quiet else format_pod(str(template), pod_view.to_json()))
        return
    if as_json or template == "json":
        click.echo(json.dumps([pod_view.to_json() for pod_view in pod_views], indent=2))
        return
    rows = [("UUID", "NAME", "STATE", "STAGE1", "SOURCE", "IP", "PORTS", "COMMAND")]
    for pod_view in pod_views:
        spec = pod_view.pod.spec
        state = pod_view.state
        if (record := pod_view.pod.exit_record()) is not None and state in ("exited", "failed"):
            state = f"{state} ({record.exit_status})"
        if pod_view.failure is not None:  # the restarts stopped: that is what needs doing something about
            state = f"{state}: {pod_view.failure}"
        elif record is not None and pod_view.state == "failed":  # a Result a status cannot say: oom-kill, timeout...
            state = f"{state}: {record.result}"
        state += _state_notes(pod_view.to_json(), state)
        source = spec.image or spec.rootfs or ""
        address, ports = pod_address(pod_view.pod) or "", ",".join(map(str, spec.ports))
        command = single_line(shlex.join(spec.app.argv))
        rows.append((pod_view.pod.uuid[:8], spec.name, state, spec.stage1, source, address, ports, command))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def _state_notes(pod: Mapping[str, Any], state: str) -> str:
    """What `list` adds to a pod's state, as podman ps's STATUS does: its health, its restarts,
    an OOM kill (unless the state says it already)."""
    notes = [pod["health"]] if pod["health"] else []
    if pod["restarts"]:
        notes.append(f"{pod['restarts']} restart{'s' if pod['restarts'] > 1 else ''}")
    if pod["oom_killed"] and "oom-kill" not in state:
        notes.append("oom-killed")
    return f" ({', '.join(notes)})" if notes else ""


# --filter KEY=VALUE, as podman ps's: one key's values are alternatives, different keys all apply.
FILTER_KEYS = {"name": "name", "id": "uuid", "uuid": "uuid", "label": "labels", "state": "state", "status": "state",
               "stage1": "stage1"}  # fmt: skip


def pod_filter(filters: Iterable[str]) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate on a pod's JSON for the --filter options given: name is a regular expression
    searched in the name (as podman's), id a UUID prefix, label KEY or KEY=VALUE, state and
    stage1 exact words."""
    wanted: dict[str, list[str]] = collections.defaultdict(list)
    for text in filters:
        key, equals, value = text.partition("=")
        if not equals or key not in FILTER_KEYS:
            raise SdrunError(f"invalid --filter '{text}'", hint=f"KEY=VALUE, KEY one of {', '.join(FILTER_KEYS)}")
        if key == "name":
            try:
                re.compile(value)
            except re.error as error:
                raise SdrunError(f"invalid --filter '{text}': {error}") from None
        wanted[FILTER_KEYS[key]].append(value)

    def matches(field: str, value: str, pod: Mapping[str, Any]) -> bool:
        if field == "name":
            return re.search(value, pod["name"]) is not None
        if field == "uuid":
            return str(pod["uuid"]).startswith(value)
        if field == "labels":
            label, equals, label_value = value.partition("=")
            return label in pod["labels"] and (not equals or pod["labels"][label] == label_value)
        return str(pod[field]) == value

    return lambda pod: all(any(matches(field, value, pod) for value in values) for field, values in wanted.items())


TEMPLATE_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
FIELD_ALIASES = {"id": "uuid", "names": "name", "status": "state", "networks": "network"}


def format_pod(template: str, pod: Mapping[str, Any]) -> str:
    """A line from a --format template: Go-template-style {{.Field}} placeholders, as podman's, of
    the keys of `list --json` (any case; ID, Names, Status as podman names them); a list is joined
    with commas, the command with spaces; \\t and \\n are a tab and a newline."""

    def field(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        key = FIELD_ALIASES.get(key, key)
        if key not in pod:
            raise SdrunError(f"--format: no field '{match.group(1)}'", hint=f"fields: {', '.join(pod)}")
        value = pod[key]
        if key == "command":
            return " ".join(value)
        if isinstance(value, list):
            return ",".join(map(str, value))
        if isinstance(value, Mapping):
            return ",".join(f"{name}={item}" for name, item in value.items())
        return "" if value is None else str(value)

    return TEMPLATE_FIELD.sub(field, template.replace("\\t", "\t").replace("\\n", "\n"))


def single_line(text: str) -> str:
    """text with its control characters (a script's newlines) escaped as Python writes them: one table row."""
    return CONTROL_CHARACTERS.sub(lambda found: repr(found.group())[1:-1], text)


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


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
    for line in _status_lines(details):
        click.echo(line)


# systemd's Results (SERVICE_RESULT) that say more than their name to someone who does not know systemd.
RESULT_MEANINGS = {
    "start-limit-hit": "systemd stopped restarting the app: it started too often",
    "oom-kill": "the kernel's OOM killer ended the app: the pod needed more memory than its --memory",
}


def _status_lines(details: Mapping[str, Any]) -> Iterator[str]:
    """`status` for people: a local time, a command line and NAME=VALUE lines, not the epoch and
    Python reprs that --json's values would print as (--json keeps them for programs)."""
    import time

    for key, value in details.items():
        if value in (None, {}, []) or value is False:
            continue
        if key == "created":
            yield f"{key}: {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(value))}"
        elif key == "command":
            yield f"{key}: {single_line(shlex.join(value))}"
        elif key == "result" and value in RESULT_MEANINGS:
            yield f"{key}: {value} ({RESULT_MEANINGS[value]})"
        elif isinstance(value, Mapping):  # env, labels: one per line, quoted as a shell would need
            yield f"{key}:"
            yield from (f"  {name}={shlex.quote(str(item))}" for name, item in value.items())
        elif isinstance(value, list):
            yield f"{key}: {', '.join(map(str, value))}"
        else:
            yield f"{key}: {value}"


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
@click.argument("pod_refs", metavar="POD...", nargs=-1, required=True)
@pass_context
def start(ctx: Context, pod_refs: tuple[str, ...]) -> None:
    """Start ended pods again, from their spec, as 'run -d' did."""
    _start_pods(ctx, pod_refs, restart=False)


@main.command()
@click.argument("pod_refs", metavar="POD...", nargs=-1, required=True)
@pass_context
def restart(ctx: Context, pod_refs: tuple[str, ...]) -> None:
    """Stop pods that run, then start them again."""
    _start_pods(ctx, pod_refs, restart=True)


def _start_pods(ctx: Context, pod_refs: tuple[str, ...], *, restart: bool) -> None:
    from sdrun import run as running

    def start_all(systemd: Systemd) -> None:
        # An installed pod that has not run yet has no directory: its unit file is enough.
        targets = [_pod_or_unit(ctx, systemd, ref) for ref in pod_refs]
        for target in targets:
            if isinstance(target, str):
                running.start_unit_file(systemd, target, restart=restart)
                click.echo(target)
            else:
                (running.restart_existing if restart else running.start_existing)(systemd, target)
                click.echo(target.name)

    with_systemd(start_all)


def _pod_or_unit(ctx: Context, systemd: Systemd, ref: str) -> Pod | str:
    """The pod ref names, else the name of an installed pod whose unit has no pod directory yet."""
    from sdrun import run as running

    try:
        return ctx.store.get(ref)
    except NotFound:
        if running.installed_unit_named(systemd, ref):
            return ref
        raise


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
    """Remove pods and everything they left on the host (a pod of several apps: all its apps)."""
    from sdrun.pods import Stores
    from sdrun.pods import manage as app_pods

    stores = Stores.of(ctx.paths)
    pods = [stores.groups.named(ref) or ctx.store.get(ref) for ref in pod_refs]

    def remove_all(systemd: Systemd) -> None:
        for pod in pods:
            if pod.dir.parent == stores.groups.paths.pods:
                app_pods.remove_pod(systemd, stores, pod)
            else:
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
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as USER, from the pod's /etc/passwd [the app's].")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Set a variable (KEY alone: the host's).")
@click.option("-w", "--workdir", metavar="DIR", help="Working directory inside the pod [the app's].")
@click.option("-t", "--tty", is_flag=True, help="A terminal of the pod's on stdin and stdout, even if ours are none.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin: it is always the command's (as podman's -i).")
@click.argument("pod_ref", metavar="POD")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_context
def enter(
    ctx: Context,
    user: str | None,
    env: tuple[str, ...],
    workdir: str | None,
    tty: bool,
    interactive: bool,
    pod_ref: str,
    command: tuple[str, ...],
) -> None:
    """Run a command inside a running pod [/bin/sh]."""
    import os

    from sdrun.spec import parse_pairs

    pod = ctx.store.get(pod_ref)
    argv = list(without_separator(command)) or ["/bin/sh"]
    given = manage.EnterOptions(user, parse_pairs(list(env), "-e", os.environ), workdir)
    as_asked = given if given != manage.EnterOptions() else None
    del interactive  # stdin is the command's either way: accepted for podman's `-it`
    sys.exit(with_systemd(lambda systemd: manage.enter(systemd, pod, argv, as_asked, tty=tty)))


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
    """Print a pod's output from the journal (removed pods' too, by name or UUID)."""
    from sdrun.systemd.logs import LogQuery, print_logs

    if bool(pod_ref) == all_pods:
        raise SdrunError("give one POD, or --all")
    query = LogQuery(follow, lines, since, until, as_json)
    print_logs(ctx.store, str(ctx.paths.root), None if all_pods else pod_ref, query)


from sdrun.cli import image as _image  # noqa: E402,F401
from sdrun.cli import network as _network  # noqa: E402,F401
from sdrun.cli import pods as _pods  # noqa: E402,F401
from sdrun.cli import units as _units  # noqa: E402,F401
