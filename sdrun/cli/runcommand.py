"""`sdrun run` on the command line: its options, a parser of them that needs no click, and the
verb itself.

Every container start pays for the CLI's imports, and click (with the inspect,
uuid, datetime... it pulls in) is ~20 ms of them. So `run`'s options are data:
the rows of the settings table (sdrun.spec.SETTINGS_TABLE, and the stage1s' own)
that are run options, between the command's own options (RUN_OPTIONS).
sdrun.cli.commands builds the click command from them (its help, its errors,
`generate` and `install`, which take the same options), and `parse` reads the
plain forms of a `run` command line with the same rows. `parse`
returns None for anything it is not sure of (--help, an option it does not know,
`-dt`, a missing value, a boolean's value...): that command line goes to click,
which then words every error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sdrun.settings import (
    BOOLEAN,
    FLAG,
    MULTIPLE,
    OPTIONAL_VALUE,
    PATH,
    RUN,
    UNITS,
    VALUE,
    Setting,
)
from sdrun.spec import DEFAULT_STAGE1, SETTINGS_TABLE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from sdrun.paths import Paths
    from sdrun.spec import PodSpec

# The options of `run` that are no spec settings: how to run the spec (detached, removed, pulled).
RUN_ONLY = frozenset({RUN})
FIRST_OPTIONS = (
    Setting("spec_file", None, "Read the spec from a TOML file.", flags=("--spec",), kind=PATH, spec=False),
    Setting(
        "detach",
        None,
        "Start and return; print the pod UUID.",
        flags=("-d", "--detach"),
        kind=FLAG,
        front_ends=RUN_ONLY,
        spec=False,
    ),
    Setting(
        "remove", None, "Remove the pod when the app ends.", flags=("--rm",), kind=FLAG, front_ends=RUN_ONLY, spec=False
    ),
    Setting(
        "interactive",
        None,
        "Give the app this command's stdin.",
        flags=("-i", "--interactive"),
        kind=FLAG,
        front_ends=RUN_ONLY,
        spec=False,
    ),
    Setting(
        "tty",
        None,
        "Give the app a terminal, relayed to this one.",
        flags=("-t", "--tty"),
        kind=FLAG,
        front_ends=RUN_ONLY,
        spec=False,
    ),
    Setting("replace", None, "Remove a pod of the same name first.", kind=FLAG, front_ends=RUN_ONLY, spec=False),
)
PULL_OPTIONS = (
    Setting(
        "platform",
        None,
        "Image pods: the platform to pull, if absent [host's].",
        metavar="OS/ARCH[/VARIANT]",
        front_ends=RUN_ONLY,
        spec=False,
    ),
    Setting(
        "tls_verify", None, "Image pods: as for 'sdrun image pull'.", kind=BOOLEAN, front_ends=RUN_ONLY, spec=False
    ),
    Setting(
        "verify",
        None,
        "Image pods: pull only what a digest pins, as 'image pull --verify'.",
        kind=FLAG,
        front_ends=RUN_ONLY,
        spec=False,
    ),
    Setting(
        "signature_policy",
        None,
        "Image pods: the signature policy of a pull [/etc/containers/policy.json, if any].",
        kind=PATH,
        front_ends=RUN_ONLY,
        spec=False,
    ),
    Setting(
        "registries_d",
        None,
        "Image pods: where a pull looks up signatures [/etc/containers/registries.d].",
        flags=("--registries.d",),
        kind=PATH,
        front_ends=RUN_ONLY,
        spec=False,
    ),
)


def run_options(settings: Iterable[Setting]) -> tuple[Setting, ...]:
    """The settings of the table that are options of `run`."""
    return tuple(setting for setting in settings if RUN in setting.front_ends and not setting.positional)


def unit_options(settings: Iterable[Setting]) -> tuple[Setting, ...]:
    """The settings of the table that are options of `generate` and `install` only."""
    return tuple(setting for setting in settings if setting.front_ends == {UNITS} and not setting.positional)


# `run`'s options: those of the shared settings table, between the command's own. The stage1s'
# own settings are options too (stage1_options), found when a command line names one.
RUN_OPTIONS = (*FIRST_OPTIONS, *run_options(SETTINGS_TABLE), *PULL_OPTIONS)
OPTIONS_BY_NAME = {name: option for option in RUN_OPTIONS for name in option.names}
FAST_KINDS = (VALUE, MULTIPLE, FLAG, PATH, OPTIONAL_VALUE)
NOT_SETTINGS = frozenset(option.dest for option in (*FIRST_OPTIONS, *PULL_OPTIONS))


def stage1_options() -> tuple[Setting, ...]:
    """The stage1s' own settings, as options of `run` (this imports the built-in stage1s)."""
    from sdrun.specbuild import stage1_settings

    return run_options(stage1_settings())


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
    option = OPTIONS_BY_NAME.get(name) or _stage1_option(name)
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


def _stage1_option(name: str) -> Setting | None:
    """A stage1's own option (--kvm-accel): only a command line that names an option the shared
    table does not have imports the stage1s for theirs."""
    if not name.startswith("--"):
        return None
    return next((option for option in stage1_options() if name in option.names), None)


# --- the verb ---


def without_separator(args: tuple[str, ...]) -> tuple[str, ...]:
    """Click keeps a `--` that follows a positional argument (POD -- CMD, IMAGE -- CMD): drop it."""
    return args[1:] if args[:1] == ("--",) else args


def spec_from_run_options(
    spec_file: Path | None, args: tuple[str, ...], given: Mapping[str, Any], default_name: str | None = None
) -> PodSpec:
    """The spec `run` options describe (also for `generate` and `install`): the settings given
    on the command line override the spec file's."""
    from sdrun.spec import check_settings, load_spec_file
    from sdrun.specbuild import build_spec, settings_table

    settings: dict[str, object] = load_spec_file(spec_file, settings_table) if spec_file else {}
    settings |= check_settings(given, "command line", settings_table(given))
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

    given = {key: value for key, value in options.items() if key not in NOT_SETTINGS}
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
