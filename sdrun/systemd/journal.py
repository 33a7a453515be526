"""Pods' output from the journal. The only module that imports python-systemd.

It uses the C reader (systemd._reader) directly: the Python wrapper around it,
systemd.journal, imports logging, uuid and more and costs ~70 ms at start-up,
which every foreground `sdrun run` would pay.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from systemd import _reader

POD_FIELD = "SDRUN_POD"
JOURNALD_VARLINK = "/run/systemd/journal/io.systemd.journal"


@dataclass(frozen=True)
class Entry:
    message: bytes
    realtime_usec: int
    fields: dict[str, bytes]


class PodJournal:
    """The journal entries of some pods (matches on one field are ORed), read forwards."""

    def __init__(self, *pod_uuids: str) -> None:
        # Not SYSTEM only: journald files the output of an app running as uid N under user-N.journal.
        self._reader = _reader._Reader(_reader.LOCAL_ONLY)
        for pod_uuid in pod_uuids:
            self._reader.add_match(f"{POD_FIELD}={pod_uuid}")

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

    def process_events(self) -> None:
        """Acknowledge a wake-up on fileno(); then entries() yields what was appended."""
        self._reader.process()

    def wait(self, timeout_usec: int) -> None:
        self._reader.wait(timeout_usec)


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
