"""Reading a container's root filesystem from the host without ever leaving it.

Every lookup goes through openat2(RESOLVE_IN_ROOT): an absolute symlink in the
image such as /etc -> /host/etc resolves inside the rootfs, never on the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SpecError
from sdrun.linux.inroot import open_in_root


def read_in_root(root: Path, path: str) -> str | None:
    try:
        with open_in_root(root, path) as fd, os.fdopen(os.dup(fd)) as stream:
            return stream.read()
    except OSError:
        return None


MISSING = "missing"


def why_not_executable(root: Path, path: str) -> str | None:
    """None if path is an executable file in the root; else why not: MISSING, or what it is instead."""
    try:
        with open_in_root(root, path, os.O_PATH) as fd:
            mode = os.fstat(fd).st_mode
    except OSError:
        return MISSING
    if stat.S_ISDIR(mode):
        return "a directory"
    if not stat.S_ISREG(mode):
        return "no regular file"
    return None if mode & 0o111 else "not executable"


def is_directory_in_root(root: Path, path: str) -> bool:
    try:
        with open_in_root(root, path, os.O_PATH | os.O_DIRECTORY):
            return True
    except OSError:
        return False


def find_executable(command: str, search_path: str, why_not: Callable[[str], str | None]) -> str:
    """The absolute path in the container that running `command` would execute, like execvp;
    why_not tells why a path in the container is no executable file (None: it is one). As execvp,
    a file that is there but cannot be executed is a permission denied, not a command not found."""
    if "/" in command:
        candidates = [command if command.startswith("/") else f"/{command}"]
    else:
        candidates = [f"{directory.rstrip('/')}/{command}" for directory in search_path.split(":") if directory]
    refused = []
    for candidate in candidates:
        reason = why_not(candidate)
        if reason is None:
            return candidate
        if reason != MISSING:
            refused.append(f"{candidate} is {reason}")
    if refused:
        raise SpecError(f"'{command}' cannot be executed: permission denied ({refused[0]})")
    raise SpecError(f"'{command}' not found in the container's rootfs", hint=f"searched {':'.join(candidates)}")


class Credentials(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


def _database(root: Path, name: str) -> list[list[str]]:
    text = read_in_root(root, f"/etc/{name}") or ""
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(root: Path, user: str | None) -> Credentials:
    """USER[:GROUP] (names or numbers) to numeric credentials, using the rootfs's /etc/passwd and /etc/group."""
    if not user:
        user = "0"
    name, _, group = user.partition(":")
    passwd = _database(root, "passwd")
    entry = next((row for row in passwd if len(row) >= 7 and name in (row[0], row[2])), None)
    if entry is None and not name.isdigit():
        raise SpecError(f"user '{name}' not found in the container's /etc/passwd")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else 0  # docker's choice for a uid with no passwd entry
    home = entry[5] if entry else "/"
    groups_db = _database(root, "group")
    if group:
        match = next((row for row in groups_db if len(row) >= 3 and group in (row[0], row[2])), None)
        if match is None and not group.isdigit():
            raise SpecError(f"group '{group}' not found in the container's /etc/group")
        gid = int(match[2]) if match else int(group)
    member_of = entry[0] if entry else None
    extra = tuple(int(row[2]) for row in groups_db if len(row) >= 4 and member_of and member_of in row[3].split(","))
    return Credentials(uid, gid, tuple(sorted(set(extra) - {gid})), home)
