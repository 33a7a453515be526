"""What a setting is: one row of the settings table, from which every front end is derived.

A spec setting is declared once, as a Setting: its key (the spec file's, and with
`-` for `_` the command line's and an installed unit's), how a raw value is checked
and converted, where the value goes in the spec, its default, its command-line
spelling and help, which front ends take it, how it meets an image's config, and
which stage1s honour it. sdrun.spec holds the table of the shared settings; a
stage1 declares its own (Stage1.settings), which stage0 adds to it
(sdrun.specbuild.all_settings). From the table come: check_settings and the
assembly of the spec (sdrun.spec, sdrun.specbuild), the options of `sdrun run`,
`generate` and `install` (sdrun.cli.runcommand, which also reads a plain `run`
command line with them without click), the `--KEY=VALUE` arguments an installed
unit carries (sdrun.units), and the refusal of a setting a stage1 cannot honour.

This module is on the path of every `sdrun run`: it imports nothing of sdrun's. It has no
`from __future__ import annotations`: NamedTuple would make a ForwardRef of each field's annotation,
and compile each (~1 ms for Setting's).
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

# How the command line takes a setting's value, and what click makes of it.
VALUE = "value"  # --opt VALUE, a string
MULTIPLE = "multiple"  # repeatable: a tuple of strings
FLAG = "flag"  # no value: True when given
PATH = "path"  # a value, as a Path
BOOLEAN = "boolean"  # a value click reads as a boolean (yes/no, true/false, 1/0): left to click
OPTIONAL_VALUE = "optional-value"  # --opt (for `implied`) or --opt=VALUE, never --opt VALUE
COMMAND = "command"  # a value the command line splits into words as a shell would (a spec file: a list)

# The front ends that take a setting (every spec setting is a spec file's key).
RUN = "run"  # an option of `sdrun run`, and of `generate` and `install`, which take run's options
UNITS = "units"  # carried by an installed unit, and an option of `generate` and `install`
RUN_AND_UNITS = frozenset({RUN, UNITS})

# Whose a setting is in a pod of several apps (docs/pods.md): `sdrun pod create` takes the pod's,
# `sdrun app add` an app's; a one-app `sdrun run` takes them all but for the few only it has.
POD = "pod"  # the pod's: its namespaces (network, ports, hostname, DNS), its stage1
APP = "app"  # each app's own: its command, user, environment, volumes, restart policy...
POD_AND_APP = "pod-and-app"  # both: the slice's limits and an app's own (memory, cpus, pids), a name
ONE_APP = "one-app"  # a one-app `run`'s only (--scope, which has no unit to put in a pod's slice)

# How a setting meets an image's config (sdrun.image.config applies them).
IMAGE_NONE = ""  # an image has nothing to say about it
IMAGE_DEFAULT = "default"  # the image's value unless the spec gives one (WorkingDir, User, StopSignal)
IMAGE_UNDER = "under"  # the image's entries, the spec's over them (Env, Labels)
IMAGE_COMMAND = "command"  # Entrypoint and Cmd, as docker combines them with the command and --entrypoint

# Where a stage1's own settings go in the spec: PodSpec.stage1_settings, by key.
STAGE1_FIELD = "stage1_settings"
FIELD_DEFAULT: Any = type("FieldDefault", (), {"__repr__": lambda self: "FIELD_DEFAULT"})()  # a row's default


class Setting(NamedTuple):
    dest: str  # the key: the spec file's, click's parameter name, `--KEY=VALUE` of a unit
    parse: Callable[[object], object] | None  # raw value (a CLI string or a TOML value) -> checked value
    help: str  # the command line's help, and the settings' documentation
    field: str | None = None  # where the value goes: "app.env", "isolation.hostname", a PodSpec field...
    # The value when none is given, which a unit leaves out: [its field's in the spec's records, which
    # are the one place a setting's type and default are written; None for a stage1's own setting]
    default: object = FIELD_DEFAULT
    flags: tuple[str, ...] = ()  # the command line's spellings; () for --KEY
    kind: str = VALUE
    metavar: str | None = None
    implied: str | None = None  # OPTIONAL_VALUE: the value when none is given
    front_ends: frozenset[str] = RUN_AND_UNITS
    image: str = IMAGE_NONE  # how it meets an image's config
    stage1s: tuple[str, ...] | None = None  # the stage1s that honour it; None: every one, or each checks itself
    spec: bool = True  # a spec setting; False: an option of the command only (detached, removed, pulled)
    positional: bool = False  # the command line gives it as an argument (IMAGE, CMD...), not as an option
    level: str = APP  # whose it is in a pod of several apps: POD, APP, POD_AND_APP or ONE_APP

    @property
    def names(self) -> tuple[str, ...]:
        """Its command-line spellings: ("-e", "--env"), or ("--env-file",) from its key."""
        return self.flags or (f"--{self.dest.replace('_', '-')}",)

    @property
    def flag(self) -> str:
        """How an error names it: its long option."""
        return self.names[-1]

    @property
    def default_value(self) -> object:
        """The default; None for a row that left its FIELD_DEFAULT unresolved (a stage1's own)."""
        return None if self.default is FIELD_DEFAULT else self.default

    def given(self, value: object) -> bool:
        """Whether a spec's value differs from the default."""
        return value != self.default_value

    def unit_values(self, value: object) -> Iterator[str | None]:
        """The values of its `--KEY=VALUE` arguments in a unit: none for a default, one per item of a
        list or table, None for a true flag. An empty list where the default is none (--entrypoint "",
        which clears the image's) is one empty value."""
        if not self.given(value) or value is None:
            return
        if value is True:
            yield None
        elif isinstance(value, dict):
            yield from (f"{key}={item}" for key, item in value.items())
        elif isinstance(value, tuple):
            yield from (str(item) for item in value) if value or self.default_value is not None else ("",)
        else:
            yield str(value)


def of_level(settings: Iterable[Setting], *levels: str) -> tuple[Setting, ...]:
    """The rows whose level is one of levels (POD_AND_APP rows are both the pod's and an app's)."""
    return tuple(setting for setting in settings if setting.level in levels)


def with_field_defaults(settings: Iterable[Setting], records: dict[str, Any]) -> tuple[Setting, ...]:
    """The rows with FIELD_DEFAULT replaced by their field's default, of records (NamedTuple classes
    by the field's prefix: "" for the spec's own fields, "app"...); None for a field with none."""
    return tuple(
        setting._replace(default=_field_default(setting.field, records))
        if setting.default is FIELD_DEFAULT
        else setting
        for setting in settings
    )


def _field_default(field: str | None, records: dict[str, Any]) -> object:
    if field is None or field == STAGE1_FIELD:
        return None
    record, _, name = field.rpartition(".")
    return records[record]._field_defaults.get(name)


def by_key(settings: Iterable[Setting]) -> dict[str, Setting]:
    return {setting.dest: setting for setting in settings}


def field_value(spec: Any, setting: Setting) -> object:
    """A setting's value in a PodSpec (a stage1's own: its default unless the spec gives it)."""
    if setting.field == STAGE1_FIELD:
        return spec.stage1_settings.get(setting.dest, setting.default_value)
    value = spec
    for name in (setting.field or "").split("."):
        value = getattr(value, name)
    return value


def not_honoured(spec: Any, settings: Iterable[Setting], stage1: str) -> dict[str, bool]:
    """Whether each setting that stage1 does not honour is given, by its flag: a stage1 refuses such a
    setting rather than ignore it (stage1.interface.refuse_flags)."""
    return {
        setting.flag: setting.given(field_value(spec, setting))
        for setting in settings
        if setting.stage1s is not None and stage1 not in setting.stage1s
    }
