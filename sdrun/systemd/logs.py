"""`sdrun logs`: which journal lines a query asks for, and how they are printed.

Reading the journal is sdrun.systemd.journal's (the only module that imports python-systemd);
this module decides which pods' lines (a pod by name or UUID prefix, removed ones too, or every
pod of a root), from where (--since, -n), up to when (--until), in which form (plain, --json,
each after its pod's name) and for how long (--follow).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from sdrun.errors import NotFound, SdrunError
from sdrun.pod import MIN_PREFIX, Pod, PodStore
from sdrun.systemd import journal
from sdrun.systemd.journal import Entry, PodJournal

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LogQuery(NamedTuple):
    follow: bool = False
    lines: int | None = None  # the last N lines
    since: str | None = None  # TIME, as journal_time reads it
    until: str | None = None
    as_json: bool = False


def print_logs(store: PodStore, root: str, pod_ref: str | None, query: LogQuery) -> None:
    """Print the lines of the pod pod_ref names, or (None) of every pod of the root, removed ones
    too, each after its pod's name."""
    names_by_uuid: Mapping[str, str] | None = None
    if pod_ref is None:
        names_by_uuid = {pod.uuid: pod.name for pod in store.all()}
        log = PodJournal.of_root(root)
        pod = None
    else:
        pod, pod_uuid = logs_target(store, root, pod_ref)
        log = PodJournal(pod_uuid)
    until_usec = journal_time(query.until) if query.until else None
    if query.since:
        log.seek_realtime(journal_time(query.since))
    elif query.lines is not None:
        log.seek_last(query.lines)
    else:
        log.seek_head()
    read = log.entries_with_fields if (query.as_json or names_by_uuid is not None) else log.entries
    first: Iterable[Entry] = read(until_usec)
    if query.since and query.lines is not None:  # the last N of those since TIME, as journalctl -n with --since
        first = iter(collections.deque(first, maxlen=query.lines))
    render = functools.partial(_log_line, as_json=query.as_json, names=names_by_uuid)
    _print_entries(first, render)
    if query.follow:
        _follow_logs(log, lambda: read(until_usec), render, until_usec, pod)


def _print_entries(entries: Iterable[Entry], render: Callable[[Entry], bytes]) -> None:
    out = sys.stdout.buffer
    for entry in entries:
        out.write(render(entry) + b"\n")
    out.flush()


def _follow_logs(
    log: PodJournal, new_entries: Callable[[], Iterable[Entry]], render: Callable[[Entry], bytes],
    until_usec: int | None, pod: Pod | None,
) -> None:  # fmt: skip
    """Print new lines as they come; for one pod, until it has ended (a restarting pod has not:
    its unit says), or until --until has passed."""
    import time

    from sdrun import manage
    from sdrun.systemd.bus import Systemd

    systemd = Systemd.connect() if pod is not None else None
    while True:
        log.wait(1_000_000)
        _print_entries(new_entries(), render)
        if until_usec is not None and time.time() * 1_000_000 > until_usec:
            return
        if pod is not None and systemd is not None and not manage.view(systemd, pod).running:
            journal.synchronize()  # journald answers once it has written the pod's last lines
            log.refresh()
            _print_entries(new_entries(), render)
            return


def _log_line(entry: Entry, *, as_json: bool, names: Mapping[str, str] | None) -> bytes:
    if as_json:
        fields = {
            key: value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            for key, value in entry.fields.items()
        }
        return json.dumps({"__REALTIME_TIMESTAMP": str(entry.realtime_usec), **fields}, sort_keys=True).encode()
    if names is not None:  # a removed pod's name is the journal's SYSLOG_IDENTIFIER
        pod_uuid = _text(entry.fields.get("SDRUN_POD", b""))
        name = names.get(pod_uuid) or _text(entry.fields.get("SYSLOG_IDENTIFIER", b"")) or pod_uuid[:8]
        return name.encode() + b" | " + bytes(entry.message)
    return bytes(entry.message)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def journal_time(text: str) -> int:
    """Microseconds since the epoch: an ISO 8601 time (local), or a span ago (30s, 10m, 2h, 1d)."""
    import time
    from datetime import datetime

    spans = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    span = text.strip().removesuffix(" ago").removeprefix("-")
    if span[:-1].isdigit() and span[-1:] in spans:
        return round((time.time() - int(span[:-1]) * spans[span[-1]]) * 1_000_000)
    try:
        return round(datetime.fromisoformat(text).timestamp() * 1_000_000)
    except ValueError:
        raise SdrunError(f"invalid time '{text}': expected e.g. 2024-05-01T12:00, 10m or 2h") from None


def logs_target(store: PodStore, root: str, ref: str) -> tuple[Pod | None, str]:
    """The pod whose lines `logs` prints, and its UUID; no Pod for a removed one, whose lines the
    journal keeps. A pod's name, else a unique prefix of its UUID, as for every verb; for removed
    pods of this root the journal has both (SYSLOG_IDENTIFIER, SDRUN_POD): a name then means the
    latest pod of that name. A whole UUID names any pod's lines, as journalctl's match would."""
    if (pod := store.named(ref)) is not None:
        return pod, pod.uuid
    candidates = set(store.uuids_with_prefix(ref))
    candidates |= journal.removed_pods_matching(root, ref, by_prefix=len(ref) >= MIN_PREFIX)
    if UUID_PATTERN.fullmatch(ref):
        candidates.add(ref)
    if len(candidates) > 1:
        raise SdrunError(f"'{ref}' matches {len(candidates)} pods: {', '.join(sorted(candidates))}",
                         hint="give more of the UUID, or all of it")  # fmt: skip
    if not candidates:
        raise NotFound(f"no such pod: '{ref}'", hint="'sdrun list' shows the pods")
    (pod_uuid,) = candidates
    with contextlib.suppress(NotFound):
        return store.load(pod_uuid), pod_uuid
    return None, pod_uuid  # removed
