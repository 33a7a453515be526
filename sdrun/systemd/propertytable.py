"""The one table of the unit properties sdrun sends: each one's D-Bus signature and unit-file form.

A pod's unit is a list of (name, signature, value) properties, built with prop(NAME, VALUE):
`sdrun run` hands it to StartTransientUnit, `sdrun install` and the generator write the very
same list as unit-file lines (unit_file_entries). PROPERTIES says, for each name, the signature
systemd's D-Bus API takes and the section, key and syntax of its unit-file line; a name not in
it is refused at once, as quadlet refuses a key its tables do not have.

The table is also the list of what survives a daemon-reload. systemd keeps a transient unit as a
file in /run/systemd/transient and reads it back at every daemon-reload and daemon-reexec; what
it cannot read back is lost from the running unit, or changed. So a property is in the table only
if systemd 252 writes it there in a form it reads back unchanged (not the ExecStartPreEx= kind,
which 252 writes under a key its parser does not know), and a row's `check` refuses the values
it would not (a command's `$` and `;`, a journal field's blank, a duration it would round).
refuse_unreloadable() applies both to every property StartTransientUnit is sent;
tests/test_reload.py checks each row with systemd itself. The few that never reach a file
(AddRef=, a scope's PIDs=, a file descriptor) are in the table without a unit-file form.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.linux.syscalls import RLIMIT_NAMES
from sdrun.systemd.unitfile import Command, quote_unexpanded

if TYPE_CHECKING:
    from sdrun.systemd.bus import Property

USEC = 1_000_000
MSEC = 1000  # systemd 252 writes a transient unit's durations in whole milliseconds...
CPU_PERIOD_USEC = 1_000_000  # CPUQuotaPerSecUSec is CPU time per second of wall time
CPU_QUOTA_STEP_USEC = CPU_PERIOD_USEC // 100  # ... and its CPUQuota= in whole percent
USEC_INFINITY = (1 << 64) - 1
TASKS_MAX_INFINITY = (1 << 64) - 1  # TasksMax=infinity on D-Bus
RLIM_INFINITY = (1 << 64) - 1  # (rlim_t) -1, as systemd's Limit*= properties take it
MS_REC = 0x4000  # BindPaths= flags: a recursive bind
# 252 writes a command's `$` and `;` as `\$` and `\;`, which it reads back as those two characters.
UNRELOADABLE_CHARACTERS = "$;"
# ... and a LogExtraFields= field as it is, which it reads back split at blanks and unquoted.
UNRELOADABLE_IN_FIELDS = frozenset(" \t\n\r\"'\\")


class UnitProperty(NamedTuple):
    """One property: its D-Bus signature; its unit-file section (None: it has no unit-file form)
    and key; its value as unit-file values, one line each (sdrun.systemd.unitfile quotes and
    escapes them); and the check that refuses a value systemd 252 would not read back unchanged."""

    signature: str
    section: str | None
    key: str
    values: Callable[[Any], list[Any]]
    check: Callable[[str, Any], None] | None = None


def prop(name: str, value: Any) -> Property:
    """The property `name` with its signature from the table; a name not in it is an error."""
    row = PROPERTIES.get(name)
    if row is None:
        raise _unknown(name)
    return (name, row.signature, value)


def _unknown(name: str) -> SdrunError:
    return SdrunError(f"unit property {name} is not one sdrun knows", hint="add it to propertytable.PROPERTIES")


def refuse_unreloadable(properties: Sequence[Property]) -> None:
    """SdrunError for a property a transient unit would not keep across a daemon-reload on 252:
    one not in the table (or sent with another signature), or a value its row's check refuses."""
    for name, signature, value in properties:
        row = PROPERTIES.get(name)
        if row is None or row.signature != signature:
            raise SdrunError(f"unit property {name} ({signature}) would not survive a daemon-reload of systemd 252")
        if row.check is not None:
            row.check(name, value)


def unit_file_entries(properties: Sequence[Property]) -> list[tuple[str, str, str | Command]]:
    """(section, key, value) for each property, in order."""
    entries: list[tuple[str, str, str | Command]] = []
    for name, signature, value in _pair_soft_limits(properties):
        row = PROPERTIES.get(name)
        if row is None or row.section is None:
            raise SdrunError(f"property {name} ({signature}) has no unit-file form", hint="add it to PROPERTIES")
        entries += [(row.section, row.key, line) for line in row.values(value)]
    return entries


# --- what systemd 252 would not read back unchanged ---


def _reloadable_commands(name: str, commands: Any) -> None:
    for executable, argv, _ in commands:
        for word in (executable, *argv):
            if any(char in word for char in UNRELOADABLE_CHARACTERS):
                raise SdrunError(
                    f"{name}: systemd 252 would change the argument {word!r} at a daemon-reload",
                    hint=f"a command systemd runs for sdrun cannot have {' or '.join(UNRELOADABLE_CHARACTERS)}"
                    " in it (its paths among it)",
                )


def _reloadable_fields(name: str, fields: Any) -> None:
    for field in fields:
        if UNRELOADABLE_IN_FIELDS.intersection(text := field.decode(errors="replace")):
            raise SdrunError(
                f"{name}: systemd 252 would change the field {text!r} at a daemon-reload",
                hint="sdrun's journal fields (the root's path among them) cannot have blanks, quotes or backslashes",
            )


def _whole_milliseconds(name: str, usec: int) -> None:
    """252 writes a duration in whole milliseconds (below one, in microseconds)."""
    if usec != USEC_INFINITY and usec >= MSEC and usec % MSEC:
        raise _rounded(name, usec)


def _a_timeout(name: str, usec: int) -> None:
    """... and reads a zero timeout back as none (TimeoutStopSec=0)."""
    _whole_milliseconds(name, usec)
    if usec == 0:
        raise SdrunError(f"unit property {name}=0: systemd 252 would read it back as no timeout at all")


def _whole_percent(name: str, usec: int) -> None:
    """252 writes CPUQuota= in whole percent."""
    if usec != USEC_INFINITY and usec % CPU_QUOTA_STEP_USEC:
        raise _rounded(name, usec)


def _rounded(name: str, usec: int) -> SdrunError:
    return SdrunError(f"unit property {name}={usec}: systemd 252 would round it at a daemon-reload")


# --- the unit-file syntax of a value ---


def _text(value: Any) -> list[Any]:
    return [str(value)]


def _boolean(value: Any) -> list[Any]:
    return ["yes" if value else "no"]


def _words(values: Any) -> list[Any]:
    return [" ".join(values)]


def _duration(usec: Any) -> list[Any]:
    for unit, size in (("s", USEC), ("ms", 1000)):
        if usec % size == 0:
            return [f"{usec // size}{unit}" if usec else "0"]
    return [f"{usec}us"]


def _stop_timeout(usec: Any) -> list[Any]:
    """On D-Bus a zero TimeoutStopUSec kills at once (Docker's --stop-timeout 0); in a unit file
    TimeoutStopSec=0 means no timeout at all. The shortest one a file can say acts alike."""
    return _duration(usec or 1)


def _cpu_percent(usec: Any) -> list[Any]:
    return [f"{round(usec / CPU_QUOTA_STEP_USEC)}%"]


def _tasks(tasks: Any) -> list[Any]:
    return ["infinity" if tasks == TASKS_MAX_INFINITY else str(tasks)]


def _signal_name(number: Any) -> list[Any]:
    return [signal.Signals(number).name]


def _commands(commands: Any) -> list[Any]:
    """Exec*= lines from a(sasb) (executable, argv, ignore failure: the "-" prefix)."""
    return [Command(command[0], tuple(command[1]), "-" if command[2] else "") for command in commands]


def _assignments(assignments: Any) -> list[Any]:
    """Environment=: one VAR=VALUE a line, quoted (with C escapes) where it needs it."""
    return [quote_unexpanded(assignment) for assignment in assignments]


def _bind_paths(binds: Any) -> list[Any]:
    """BindPaths= lines, `[-]SOURCE:DEST:rbind|norbind`, from a(ssbt) (source, dest, ignore-enoent, flags)."""
    lines = []
    for source, destination, ignore_missing, flags in binds:
        if ":" in source + destination:
            raise SdrunError(f"cannot write bind {source}:{destination} in a unit file: its path has a ':'")
        option = "rbind" if flags & MS_REC else "norbind"
        lines.append(quote_unexpanded(f"{'-' if ignore_missing else ''}{source}:{destination}:{option}"))
    return lines


def _fields(fields: Any) -> list[Any]:
    """LogExtraFields=: one field a line, quoted where it needs it (systemd unquotes each word)."""
    return [quote_unexpanded(field.decode()) for field in fields]


def _devices(devices: Any) -> list[Any]:
    return [f"{path} {access}" for path, access in devices]


def _profile(pair: Any) -> list[Any]:
    """AppArmorProfile=: (ignore failure, profile), a "-" prefix in a file."""
    return [("-" if pair[0] else "") + pair[1]]


def _limit(value: Any) -> list[Any]:
    """LimitX=: the limit, or SOFT:HARD for the pair _pair_soft_limits makes; infinity for (rlim_t) -1."""
    values = value if isinstance(value, tuple) else (value,)
    return [":".join("infinity" if limit == RLIM_INFINITY else str(limit) for limit in values)]


def _soft_limit_alone(value: Any) -> list[Any]:
    raise SdrunError("a soft resource limit has no unit-file form without its hard one")


def _pair_soft_limits(properties: Sequence[Property]) -> list[Property]:
    """On D-Bus LimitNOFILE= is the hard limit and LimitNOFILESoft= the soft one; a unit file says
    both in one LimitNOFILE=SOFT:HARD. Each soft limit joins its hard one as a (soft, hard) pair."""
    hard = {name for name, _, _ in properties if name in HARD_LIMITS}
    soft = {base: value for name, _, value in properties if (base := name.removesuffix("Soft")) in hard}
    paired: list[Property] = []
    for name, signature, value in properties:
        if name.endswith("Soft") and name.removesuffix("Soft") in hard:
            continue  # written with its hard limit
        if name in soft:
            paired.append((name, "(tt)", (soft[name], value)))
        else:
            paired.append((name, signature, value))
    return paired


def _no_file_form(value: Any) -> list[Any]:
    raise AssertionError("unit_file_entries writes no property without a section")


HARD_LIMITS = frozenset(f"Limit{name.upper()}" for name in RLIMIT_NAMES)
UNIT = "Unit"
SERVICE = "Service"
TRANSIENT = None  # systemd keeps it in the unit's state, never in its file: no unit-file form


def _text_in(section: str, key: str) -> UnitProperty:
    return UnitProperty("s", section, key, _text)


def _boolean_in(key: str) -> UnitProperty:
    return UnitProperty("b", SERVICE, key, _boolean)


def _units_in(key: str) -> UnitProperty:
    return UnitProperty("as", UNIT, key, _words)


def _commands_in(key: str) -> UnitProperty:
    return UnitProperty("a(sasb)", SERVICE, key, _commands, _reloadable_commands)


def _duration_in(section: str, key: str) -> UnitProperty:
    return UnitProperty("t", section, key, _duration, _whole_milliseconds)


def _transient(signature: str) -> UnitProperty:
    return UnitProperty(signature, TRANSIENT, "", _no_file_form)


# name on D-Bus: (signature, unit-file section, key, values, check)
PROPERTIES: dict[str, UnitProperty] = {
    "Description": _text_in(UNIT, "Description"),
    "Requires": _units_in("Requires"),
    "After": _units_in("After"),
    "Wants": _units_in("Wants"),
    "Requisite": _units_in("Requisite"),
    "StartLimitIntervalUSec": _duration_in(UNIT, "StartLimitIntervalSec"),
    "StartLimitBurst": UnitProperty("u", UNIT, "StartLimitBurst", _text),
    "CollectMode": _text_in(UNIT, "CollectMode"),
    "Type": _text_in(SERVICE, "Type"),
    "NotifyAccess": _text_in(SERVICE, "NotifyAccess"),
    "Slice": _text_in(SERVICE, "Slice"),
    # Commands as a(sasb), the ExecStartPreEx= kind never (see the docstring): sdrun's own
    # commands run privileged through PermissionsStartOnly=, not the Ex kind's "+".
    "ExecStartPre": _commands_in("ExecStartPre"),
    "ExecStart": _commands_in("ExecStart"),
    "ExecStartPost": _commands_in("ExecStartPost"),
    "ExecStopPost": _commands_in("ExecStopPost"),
    "PermissionsStartOnly": _boolean_in("PermissionsStartOnly"),
    "Delegate": _boolean_in("Delegate"),
    "StandardOutput": _text_in(SERVICE, "StandardOutput"),
    "StandardError": _text_in(SERVICE, "StandardError"),
    "SyslogIdentifier": _text_in(SERVICE, "SyslogIdentifier"),
    "SyslogLevelPrefix": _boolean_in("SyslogLevelPrefix"),
    "LogExtraFields": UnitProperty("aay", SERVICE, "LogExtraFields", _fields, _reloadable_fields),
    "LogRateLimitIntervalUSec": _duration_in(SERVICE, "LogRateLimitIntervalSec"),
    "MemoryMax": UnitProperty("t", SERVICE, "MemoryMax", _text),
    "CPUQuotaPerSecUSec": UnitProperty("t", SERVICE, "CPUQuota", _cpu_percent, _whole_percent),
    "TasksMax": UnitProperty("t", SERVICE, "TasksMax", _tasks),
    "Restart": _text_in(SERVICE, "Restart"),
    "RestartUSec": _duration_in(SERVICE, "RestartSec"),
    "KillMode": _text_in(SERVICE, "KillMode"),
    "KillSignal": UnitProperty("i", SERVICE, "KillSignal", _signal_name),
    "TimeoutStopUSec": UnitProperty("t", SERVICE, "TimeoutStopSec", _stop_timeout, _a_timeout),
    "DevicePolicy": _text_in(SERVICE, "DevicePolicy"),
    "DeviceAllow": UnitProperty("a(ss)", SERVICE, "DeviceAllow", _devices),
    # As systemd-run sends them: SELinuxContext= as a string (read back as a struct), AppArmorProfile=
    # as (ignore failure, profile), a struct that dbus-next wants as a list.
    "SELinuxContext": _text_in(SERVICE, "SELinuxContext"),
    "AppArmorProfile": UnitProperty("(bs)", SERVICE, "AppArmorProfile", _profile),
    "RootDirectory": _text_in(SERVICE, "RootDirectory"),
    "RootDirectoryStartOnly": _boolean_in("RootDirectoryStartOnly"),
    "MountAPIVFS": _boolean_in("MountAPIVFS"),
    "BindPaths": UnitProperty("a(ssbt)", SERVICE, "BindPaths", _bind_paths),
    "User": _text_in(SERVICE, "User"),
    "Group": _text_in(SERVICE, "Group"),
    "SupplementaryGroups": UnitProperty("as", SERVICE, "SupplementaryGroups", _words),
    "WorkingDirectory": _text_in(SERVICE, "WorkingDirectory"),
    "Environment": UnitProperty("as", SERVICE, "Environment", _assignments),
    "UnsetEnvironment": UnitProperty("as", SERVICE, "UnsetEnvironment", _words),
    "IgnoreSIGPIPE": _boolean_in("IgnoreSIGPIPE"),
    # LimitNOFILE= is the hard limit on D-Bus, LimitNOFILESoft= the soft one: one line in a file.
    **{name: UnitProperty("t", SERVICE, name, _limit) for name in HARD_LIMITS},
    **{f"{name}Soft": UnitProperty("t", SERVICE, name, _soft_limit_alone) for name in HARD_LIMITS},
    # Never in a unit file: a reference that holds the unit while we read its exit status,
    # a scope's processes, the stdin `run -i` hands over (an index into the call's descriptors).
    "AddRef": _transient("b"),
    "PIDs": _transient("au"),
    "StandardInputFileDescriptor": _transient("h"),
}
