"""Pods' output from the journal. The only module that imports python-systemd.

It uses the C reader (systemd._reader) directly: the Python wrapper around it,
systemd.journal, imports logging, uuid and more and costs ~70 ms at start-up,
which every foreground `sdrun run` would pay.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

from systemd import _reader

POD_FIELD = "SDRUN_POD"
ROOT_FIELD = "SDRUN_ROOT"
JOURNALD_VARLINK = "/run/systemd/journal/io.systemd.journal"
JOURNAL_DIRECTORIES = ("/run/log/journal", "/var/log/journal")  # each holds a directory per machine ID


class Entry(NamedTuple):
    message: bytes
    realtime_usec: int
    fields: dict[str, bytes]


class PodJournal:
    """The journal entries of some pods (matches on one field are ORed), read forwards.

    Entries journald appends to the files a reader has open show up on the next read (the
    files are shared mappings), so a reader can be followed by polling. Only files journald
    starts later (rotation, an app's first line as a new uid) need news: wait() and fileno()
    get it through inotify, refresh() from the directories' modification times. inotify has
    a price: the reader's close then waits for the kernel to retire its watches
    (synchronize_srcu, 5-20 ms here)."""

    def __init__(self, *pod_uuids: str) -> None:
        self._matches = [f"{POD_FIELD}={pod_uuid}" for pod_uuid in pod_uuids]
        self._directories = _journal_directories()
        self._reader = self._open()

    def refresh(self) -> None:
        """Reopen if journald has started a file since (an app's first line as a new uid, a
        rotation): a new file changes its directory, which a stat() tells."""
        directories = _journal_directories()
        if directories != self._directories:
            self._directories = directories
            self.reopen()

    def _open(self) -> Any:
        # Not SYSTEM only: journald files the output of an app running as uid N under user-N.journal.
        reader = _reader._Reader(_reader.LOCAL_ONLY)
        for match in self._matches:
            reader.add_match(match)
        return reader

    @classmethod
    def of_root(cls, root: str) -> PodJournal:
        """The entries of every pod of an sdrun root, removed ones too (their units said SDRUN_ROOT)."""
        journal = cls()
        journal._matches = [f"{ROOT_FIELD}={root}"]
        journal._reader = journal._open()
        return journal

    def reopen(self) -> None:
        """Continue on a fresh reader from where this one stands: it sees the files journald has
        started since it was opened."""
        try:
            cursor = self._reader._get_cursor()
        except OSError:  # nothing read yet
            cursor = None
        self._reader.close()
        self._reader = self._open()
        if cursor is None:
            self._reader.seek_head()
            return
        self._reader.seek_cursor(cursor)
        if self._reader._next() and not self._reader.test_cursor(cursor):
            self._reader._previous()  # the entry read is gone; the next one is new to us

    def fileno(self) -> int:
        return int(self._reader.fileno())

    def close(self) -> None:
        self._reader.close()

    def seek_head(self) -> None:
        self._reader.seek_head()

    def seek_last(self, count: int) -> None:
        """Position so that reading yields the last `count` entries."""
        self._reader.seek_tail()
        moved = 0
        while moved < count and self._reader._previous():
            moved += 1
        # _next() moves off the entry we stand on: step back once more so that it is included.
        if moved and not self._reader._previous():
            self._reader.seek_head()

    def seek_realtime(self, usec: int) -> None:
        self._reader.seek_realtime(usec)

    def entries(self, until_usec: int | None = None) -> Iterator[Entry]:
        """Entries from the current position to the end of what is written now."""
        while self._reader._next():
            timestamp = int(self._reader._get_realtime())
            if until_usec is not None and timestamp > until_usec:
                return
            yield Entry(self._message(), timestamp, {})

    def entries_with_fields(self, until_usec: int | None = None) -> Iterator[Entry]:
        while self._reader._next():
            timestamp = int(self._reader._get_realtime())
            if until_usec is not None and timestamp > until_usec:
                return
            fields = {key: value for key, value in self._reader._get_all().items()}
            yield Entry(self._message(), timestamp, fields)

    def _message(self) -> bytes:
        try:
            value = self._reader._get("MESSAGE")
        except KeyError:
            return b""
        return value if isinstance(value, bytes) else str(value).encode()

    def wait(self, timeout_usec: int) -> None:
        self._reader.wait(timeout_usec)


# --- pods the journal knows: removed ones too ---

IDENTIFIER_FIELD = "SYSLOG_IDENTIFIER"  # a pod's unit tags its lines with the pod's name


def removed_pods_matching(root: str, ref: str, *, by_prefix: bool) -> set[str]:
    """The UUIDs of an sdrun root's pods with lines in the journal that ref names: the latest pod
    named ref, and (by_prefix) those whose UUID starts with ref. One reader for both lookups."""
    reader = _reader._Reader(_reader.LOCAL_ONLY)
    try:
        found = set()
        if by_prefix:  # every value of the field in the journal files, from their field index
            values = {_text(value) for value in reader.query_unique(POD_FIELD)}
            found |= {pod for pod in values if pod.startswith(ref) and _has_lines(reader, pod, root)}
        named = _latest_pod_named(reader, root, ref)
        if named is not None:
            found.add(named)
        return found
    finally:
        reader.close()


def _has_lines(reader: Any, pod_uuid: str, root: str) -> bool:
    reader.flush_matches()
    reader.add_match(f"{POD_FIELD}={pod_uuid}")
    reader.add_match(f"{ROOT_FIELD}={root}")  # another field: ANDed
    reader.seek_head()
    return bool(reader._next())


def _latest_pod_named(reader: Any, root: str, name: str) -> str | None:
    """The UUID of the pod of the root named `name` that logged last; None if none did."""
    reader.flush_matches()
    reader.add_match(f"{IDENTIFIER_FIELD}={name}")
    reader.add_match(f"{ROOT_FIELD}={root}")
    reader.seek_tail()
    while reader._previous():  # the last line first
        with contextlib.suppress(KeyError):
            return _text(reader._get(POD_FIELD))
    return None


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _journal_directories() -> dict[str, int]:
    """The journal directories of this machine, each with its modification time (ns)."""
    found = {}
    for top in JOURNAL_DIRECTORIES:
        try:
            entries = os.scandir(top)
        except OSError:
            continue
        with entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir():
                        found[entry.path] = entry.stat().st_mtime_ns
    return found


def synchronize() -> None:
    """Return once journald has written everything logged before this call (journalctl --sync).

    journald handles the request only after the stream input already queued,
    so once an app has exited, all its output is readable afterwards."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        try:
            connection.connect(JOURNALD_VARLINK)
            connection.sendall(json.dumps({"method": "io.systemd.Journal.Synchronize"}).encode() + b"\0")
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            return  # an old or absent journald: the last lines may lag, nothing worse


JOURNALD_NATIVE = "/run/systemd/journal/socket"
KMSG = "/dev/kmsg"
PRIORITY_ERROR = 3


def log_error(identifier: str, message: str) -> None:
    """An error line in the journal for a program whose output reaches no one: a generator runs
    with PID 1's stderr. journald's own protocol (one datagram of KEY=value lines) at daemon-reload;
    at boot, before journald runs, the kernel's log, which journald reads once it starts."""
    one_line = message.replace("\n", " ")
    fields = f"SYSLOG_IDENTIFIER={identifier}\nPRIORITY={PRIORITY_ERROR}\nMESSAGE={one_line}\n"
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.sendto(fields.encode(), JOURNALD_NATIVE)
        return
    with contextlib.suppress(OSError), open(KMSG, "w") as kmsg:
        kmsg.write(f"<{PRIORITY_ERROR}>{identifier}: {one_line}\n")
