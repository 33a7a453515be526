"""`sdrun pod create` and `sdrun app add|list|stop|rm`: pods of several apps (sdrun.pods).

Their options are rows of the settings table, chosen by each row's level (sdrun.settings): the
pod's for `pod create`, an app's for `app add` (docs/pods.md lists them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from sdrun.cli.commands import Context, click_options, given_options, main, pass_context, with_systemd
from sdrun.cli.runcommand import PULL_OPTIONS, run_options, without_separator
from sdrun.pods import Stores
from sdrun.pods import manage as pods
from sdrun.spec import SETTINGS_TABLE

if TYPE_CHECKING:
    from sdrun.systemd.bus import Systemd


def _with_options(command: click.Command, options: Any, others: Any = ()) -> click.Command:
    """Put the table's rows as options before the command's arguments; the other level's rows
    too, hidden, so that one given says whose it is (sdrun.pods.manage.check_level) rather than
    click's "no such option"."""
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    own = [param for param in command.params if not isinstance(param, click.Argument)]
    hidden = click_options(others)
    for param in hidden:
        assert isinstance(param, click.Option)
        param.hidden = True
    command.params = [*own, *click_options(options), *hidden, *arguments]
    return command


def _others(rows: Any, taken: Any) -> list[Any]:
    names = {name for row in taken for name in row.names}
    return [row for row in rows if not row.positional and not names & set(row.names)]


@main.group()
def pod() -> None:
    """Pods of several apps: sdrun pod create NAME, then sdrun app add NAME ..."""


@pod.command(name="create")
@click.argument("name")
@click.pass_context
def create(click_ctx: click.Context, /, name: str, **options: Any) -> None:
    """Create a pod with no app: its slice, network, IPC and UTS namespaces (sdrun rm NAME removes it)."""
    ctx: Context = click_ctx.obj
    given = given_options(click_ctx, options) | {"name": name}
    group = with_systemd(lambda systemd: pods.create_pod(systemd, ctx.paths, given))
    click.echo(group.uuid)


POD_OPTIONS = [row for row in pods.pod_settings() if row.dest != "name"]
_with_options(create, POD_OPTIONS, _others(run_options(SETTINGS_TABLE), pods.pod_settings()))


@main.group()
def app() -> None:
    """The apps of a pod of several apps (sdrun pod create)."""


@app.command(name="add")
@click.argument("pod_ref", metavar="POD")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def add(click_ctx: click.Context, /, pod_ref: str, args: tuple[str, ...], **options: Any) -> None:
    """Add an app: sdrun app add POD (IMAGE | --rootfs DIR) --name APP [OPTIONS] [-- CMD ARGS...]

    Options may come anywhere before the `--` that starts the command."""
    from sdrun.image.pullsettings import PullSettings

    ctx: Context = click_ctx.obj
    given = given_options(click_ctx, options)
    pull_keys = {option.dest for option in PULL_OPTIONS}
    pull = PullSettings(
        given.pop("platform", None),
        given.pop("tls_verify", None),
        bool(given.pop("verify", False)),
        given.pop("signature_policy", None),
        given.pop("registries_d", None),
    )
    assert not pull_keys & given.keys()
    app = with_systemd(lambda systemd: pods.add_app(systemd, ctx.paths, pod_ref, given, without_separator(args), pull))
    click.echo(app.uuid)


APP_OPTIONS = [*[row for row in pods.app_settings() if not row.positional], *PULL_OPTIONS]
_with_options(add, APP_OPTIONS, _others(run_options(SETTINGS_TABLE), APP_OPTIONS))


@app.command(name="list")
@click.argument("pod_ref", metavar="POD")
@pass_context
def list_apps(ctx: Context, pod_ref: str) -> None:
    """The pod's apps, their units and states."""
    stores = Stores.of(ctx.paths)
    group = pods.get_pod(stores, pod_ref)
    click.echo("APP\tUNIT\tSTATE")
    for view in with_systemd(lambda systemd: pods.list_apps(systemd, stores, group)):
        click.echo(f"{view.name}\t{view.unit}\t{view.state}")


@app.command(name="stop")
@click.argument("pod_ref", metavar="POD")
@click.argument("app_name", metavar="APP")
@pass_context
def stop(ctx: Context, pod_ref: str, app_name: str) -> None:
    """Stop one app; the others go on."""
    stores = Stores.of(ctx.paths)
    target = pods.get_app(stores, pods.get_pod(stores, pod_ref), app_name)
    with_systemd(lambda systemd: pods.stop_app(systemd, target))


@app.command(name="rm")
@click.argument("pod_ref", metavar="POD")
@click.argument("app_name", metavar="APP")
@pass_context
def remove(ctx: Context, pod_ref: str, app_name: str) -> None:
    """Stop and remove one app."""
    stores = Stores.of(ctx.paths)
    target = pods.get_app(stores, pods.get_pod(stores, pod_ref), app_name)

    def remove_it(systemd: Systemd) -> None:
        pods.remove_app(systemd, stores, target)

    with_systemd(remove_it)
