"""Verbs for pods as installed units: generate, install, uninstall, and the ones units run
(prepare, register-machine, healthcheck: hidden, not for people). The logic is in sdrun.units."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sdrun.cli.commands import Context, click_options, given_options, main, pass_context, with_systemd
from sdrun.cli.runcommand import RUN_OPTIONS, spec_from_run_options, unit_options
from sdrun.errors import SdrunError, SpecError, error_line
from sdrun.paths import DEFAULT_UNIT_DIR
from sdrun.settings import COMMAND, UNITS
from sdrun.spec import DEFAULT_STAGE1, SETTINGS_TABLE, PodSpec, parse_name

if TYPE_CHECKING:
    from sdrun.systemd.bus import Systemd

# run's options that an installed unit does not take (its ExecStartPre does not pull, nor detach...)
RUN_ONLY = frozenset(option.dest for option in RUN_OPTIONS if UNITS not in option.front_ends)
# The settings only installed units take, which `run` refuses (listen, healthcheck...)
UNIT_SETTINGS = unit_options(SETTINGS_TABLE)


def unit_command(command: click.Command) -> click.Command:
    """Give a verb the unit-only settings and every option and argument of `sdrun run`."""
    command.params += click_options(UNIT_SETTINGS)
    command.params += [param for param in main.commands["run"].params if param.name not in RUN_ONLY]
    return command


def _spec_from(click_ctx: click.Context, options: dict[str, Any]) -> PodSpec:
    """The spec: run's options as run reads them, plus the unit-only settings; a command's words
    (--healthcheck) are split as a shell would."""
    for setting in UNIT_SETTINGS:
        if setting.kind == COMMAND and options.get(setting.dest) is not None:
            import shlex

            options[setting.dest] = shlex.split(options[setting.dest])
    spec_file, args = options.pop("spec_file"), options.pop("args")
    # As for the generator, a spec file names its pod unless it says otherwise.
    given = given_options(click_ctx, options)
    return spec_from_run_options(spec_file, args, given, spec_file.stem if spec_file else None)


@unit_command
@main.command(context_settings={"allow_interspersed_args": False})
@click.pass_context
def generate(click_ctx: click.Context, /, **options: Any) -> None:
    """Print a pod's systemd units: sdrun generate [OPTIONS] (--spec FILE | --name NAME (--rootfs DIR | IMAGE)) [-- CMD]

    The same bytes every time, so the pod needs a name: --name, or the spec file's."""
    from sdrun import units

    ctx: Context = click_ctx.obj
    if options.get("name") is None and options.get("spec_file") is None:
        # `run` picks a random name; a unit's name is its file's and its pod's UUID's, and the
        # output must be the same bytes every time.
        raise SpecError("generate: name the pod with --name (or --spec FILE, which its file names)")
    spec = _spec_from(click_ctx, options)
    rendered = units.pod_units(spec, ctx.paths).rendered()
    for number, (name, text) in enumerate(rendered.items()):
        if len(rendered) > 1:
            click.echo(("\n" if number else "") + f"# ==> {name} <==")
        click.echo(text, nl=False)


@unit_command
@main.command()
@click.option("--enable", is_flag=True, help="Enable the unit (start it at boot).")
@click.option("--now", is_flag=True, help="Start it now (restart it, if --replace'd while it runs).")
@click.option("--replace", is_flag=True, help="Replace the pod's units if it is installed already.")
@click.option("--unit-dir", type=click.Path(path_type=Path), help="Where to write units [/etc/systemd/system].")
@click.argument("pod_name", metavar="NAME")
@click.pass_context
def install(
    click_ctx: click.Context,
    /,
    enable: bool,
    now: bool,
    replace: bool,
    unit_dir: Path | None,
    pod_name: str,
    **options: Any,
) -> None:
    """Install a pod as sdrun-NAME.service: sdrun install [--enable] [--now] [--replace] NAME (--spec FILE | OPTIONS)"""
    from sdrun import units

    ctx: Context = click_ctx.obj
    if options.get("name") not in (None, pod_name):
        raise SdrunError(f"--name {options['name']} contradicts NAME {pod_name}")
    spec = _spec_from(click_ctx, options)._replace(name=parse_name(pod_name))
    target = unit_dir or DEFAULT_UNIT_DIR

    def install_pod(systemd: Systemd) -> str:
        units.check_install(systemd, spec, target, replace=replace)  # before a pull
        pod_units = units.pod_units(_with_stored_image(ctx, spec) if spec.image else spec, ctx.paths)
        units.install(systemd, pod_units, target, enable=enable, now=now)
        return pod_units.service

    click.echo(with_systemd(install_pod))


def _with_stored_image(ctx: Context, spec: PodSpec) -> PodSpec:
    """The image pulled now, as `run` would; the unit names it as stored, which its starts then find."""
    from sdrun.image.transfer import PullOptions, find_or_pull

    assert spec.image is not None
    image = find_or_pull(ctx.paths, spec.image, PullOptions(progress=sys.stderr))
    if not image.names:  # a nameless image is no store entry a unit could find again
        raise SdrunError(f"{spec.image} has no name in the store", hint=f"sdrun image import {spec.image} NAME")
    return spec._replace(image=image.names[0])


@main.command()
@click.option("--unit-dir", type=click.Path(path_type=Path), help="Where the units are [/etc/systemd/system].")
@click.argument("name")
@pass_context
def uninstall(ctx: Context, unit_dir: Path | None, name: str) -> None:
    """Stop, disable and remove an installed pod's units (and its pod directory)."""
    from sdrun import units

    target = unit_dir or DEFAULT_UNIT_DIR
    with_systemd(lambda systemd: units.uninstall(systemd, ctx.paths, name, target))
    click.echo(f"sdrun-{name}.service")


# --- run by the units themselves ---


@main.command(hidden=True)
@click.option("--uuid", "pod_uuid", required=True)
@click.argument("settings", nargs=-1, type=click.UNPROCESSED)
@pass_context
def prepare(ctx: Context, pod_uuid: str, settings: tuple[str, ...]) -> None:
    """ExecStartPre= of an installed unit: (re)create its pod directory from the settings."""
    from sdrun import units

    spec = units.spec_from_arguments(settings, DEFAULT_STAGE1)
    units.prepare(ctx.paths, spec, pod_uuid)


@main.command(name="register-machine", hidden=True)
@click.argument("pod_uuid")
@pass_context
def register_machine(ctx: Context, pod_uuid: str) -> None:
    """ExecStartPost= of an installed unit: register the running pod with systemd-machined."""
    from sdrun.systemd import machined

    pod = ctx.store.load(pod_uuid)
    with_systemd(lambda systemd: machined.register(systemd, pod))


@main.command(hidden=True)
@click.argument("pod_uuid")
@pass_context
def healthcheck(ctx: Context, pod_uuid: str) -> None:
    """ExecStart= of sdrun-health@NAME.service: run the pod's check inside it; restart the pod if it fails."""
    from sdrun import units

    pod = ctx.store.load(pod_uuid)
    status = with_systemd(lambda systemd: units.healthcheck(systemd, pod))
    if status is None:
        sys.stderr.write(error_line(f"pod '{pod.name}' is not active: not checked"))
        return
    if status:
        sys.stderr.write(error_line(f"health check of pod '{pod.name}' failed (exit status {status}): restarting it"))
    sys.exit(status)
