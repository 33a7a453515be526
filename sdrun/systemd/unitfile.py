"""Unit files as data: ordered sections of ordered keys, written with systemd's quoting.

What needs escaping, per systemd.unit(5) and systemd.service(5):
* `%` starts a specifier in almost every setting: written `%%` (not in NO_SPECIFIERS);
* a value is one line: a control character cannot be written outside a command;
* a command line is split into words: a word with blanks, quotes, a backslash or
  a control character is double-quoted, with C escapes (`\\"`, `\\\\`, `\\n`, `\\xNN`);
  a lone `;` would separate commands, so it is quoted too. (`$` is escaped to `$$`
  before a command reaches here: see properties.escape_variables.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sdrun.errors import SdrunError

SECTION_ORDER = ("Unit", "Service", "Socket", "Timer", "Install")
PLAIN_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@%$^~[]{}()!?*#&|<>")
# Settings systemd parses without expanding specifiers: a `%` there is literal (CPUQuota=50%).
NO_SPECIFIERS = frozenset({"CPUQuota", "MemoryMax", "TasksMax"})
C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


class Command(NamedTuple):
    """An Exec*= command: prefix characters (+, -, :, !), the executable and the full argv."""

    executable: str
    argv: tuple[str, ...]
    prefix: str = ""


class UnitFile:
    def __init__(self, header: Sequence[str] = ()) -> None:
        self.header = tuple(header)  # comment lines at the top
        self.sections: dict[str, list[tuple[str, str | Command]]] = {}

    def add(self, section: str, key: str, value: str | Command) -> UnitFile:
        self.sections.setdefault(section, []).append((key, value))
        return self

    def extend(self, entries: Iterable[tuple[str, str, str | Command]]) -> UnitFile:
        for section, key, value in entries:
            self.add(section, key, value)
        return self

    def get(self, section: str, key: str) -> list[str | Command]:
        return [value for name, value in self.sections.get(section, []) if name == key]

    def render(self) -> str:
        lines = [f"# {line}" if line else "#" for line in self.header]
        for section in _ordered(self.sections):
            if lines:
                lines.append("")
            lines.append(f"[{section}]")
            lines += [f"{key}={_render_value(key, value)}" for key, value in self.sections[section]]
        return "\n".join(lines) + "\n"


def _ordered(sections: Iterable[str]) -> list[str]:
    known = [name for name in SECTION_ORDER if name in sections]
    return known + [name for name in sections if name not in SECTION_ORDER]


def _render_value(key: str, value: str | Command) -> str:
    if isinstance(value, Command):
        return command_line(value)
    return plain_value(key, value)


def plain_value(key: str, value: str) -> str:
    if any(_control(char) for char in value) or value.endswith("\\"):
        raise SdrunError(f"{key}={value!r} cannot be written in a unit file")
    return value if key in NO_SPECIFIERS else value.replace("%", "%%")


def command_line(command: Command) -> str:
    """`prefix[@]executable [argv0] args...`, each word quoted as needed."""
    words: Sequence[str] = command.argv
    prefix = command.prefix
    if command.argv[0] != command.executable:
        prefix += "@"
        words = (command.executable, *command.argv)
    else:
        words = (command.executable, *command.argv[1:])
    return prefix + " ".join(quote_word(word) for word in words)


def quote_word(word: str) -> str:
    return quote_unexpanded(word.replace("%", "%%"))


def quote_unexpanded(word: str) -> str:
    """A word as quote_word writes it, its `%` left as it is (for a value plain_value escapes)."""
    if word and word != ";" and set(word) <= PLAIN_WORD:
        return word
    escaped = "".join(C_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if _control(char) else char) for char in word)
    return f'"{escaped}"'


def _control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127
