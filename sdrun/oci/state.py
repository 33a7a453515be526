"""A container's state under sdrun-oci's --root: ROOT/ID/ with state.json, lock and exec.fifo.

The directory is made with mkdir(2), which reserves the ID; state.json is written atomically
(sdrun.files.write_atomically) once `create` has succeeded, so a directory without it is a
create that never finished, which `delete --force` removes. exec.fifo holds the container
before its app until `start` (as runc's): while it exists the container is "created".
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import NotFound, SdrunError

STATE = "state.json"
LOCK = "lock"
FIFO = "exec.fifo"
SECCOMP = "seccomp.bpf"  # the container's compiled filter, which exec loads too
OCI_VERSION = "1.0.2"


class Record(NamedTuple):
    id: str
    pid: int
    start_time: int  # the init's start time (/proc/PID/stat field 22): a recycled pid is not it
    bundle: str
    unit: str  # the transient scope
    annotations: dict[str, str]
    created: str
    hooks: dict[str, list[list[Any]]] = {}  # noqa: RUF012 - poststart and poststop (sdrun.oci.hooks.to_json)


class ContainerDir:
    def __init__(self, root: Path, container_id: str) -> None:
        self.id = container_id
        self.path = root / container_id
        self._lock_fd: int | None = None

    @property
    def fifo(self) -> Path:
        return self.path / FIFO

    def claim(self) -> None:
        """Reserve the ID: make its directory, or fail if another container has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            raise SdrunError(f"container with id '{self.id}' already exists") from None
        self.lock()

    def lock(self) -> None:
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NotFound(f"container '{self.id}' does not exist") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def forget_lock(self) -> None:
        """In a forked child: close our copy of the lock, which would otherwise hold it as long as we live."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def read(self) -> Record:
        try:
            data: dict[str, Any] = json.loads((self.path / STATE).read_text())
        except FileNotFoundError:
            raise NotFound(f"container '{self.id}' does not exist") from None
        return Record(**data)

    def write(self, record: Record) -> None:
        from sdrun.files import write_atomically

        write_atomically(self.path / STATE, json.dumps(record._asdict()) + "\n")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None if there is no such process or it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            text = stream.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after the command, which may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def status(container: ContainerDir, record: Record) -> str:
    """created (held before its app), running, paused or stopped, as the runtime spec says them."""
    if record.pid <= 0 or process_start_time(record.pid) != record.start_time:
        return "stopped"
    if container.fifo.exists():
        return "created"
    freezer = freezer_file(record.pid)
    if freezer is not None and read_text(freezer).strip() == "1":
        return "paused"
    return "running"


# Where the unified cgroup hierarchy is mounted: beside the v1 ones on a hybrid host, else at the top.
UNIFIED_MOUNTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def freezer_file(pid: int) -> str | None:
    """The cgroup.freeze of pid's cgroup in the unified hierarchy (its scope's: nothing in the container
    can make a cgroup of its own), which cgroup v2 has on a hybrid host too; None if there is none."""
    try:
        lines = read_text(f"/proc/{pid}/cgroup").splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    paths = [line[3:] for line in lines if line.startswith("0::")]
    for mount in UNIFIED_MOUNTS:
        for path in paths:
            candidate = f"{mount}{path.rstrip('/')}/cgroup.freeze"
            if path != "/" and os.path.exists(candidate):
                return candidate
    return None


def read_text(path: str) -> str:
    with open(path) as stream:
        return stream.read()


def state_document(container: ContainerDir, record: Record, current: str | None = None) -> dict[str, Any]:
    """The runtime spec's state of a container (and runc's `created` time); current: its status, if known."""
    current = current or status(container, record)
    return {
        "ociVersion": OCI_VERSION,
        "id": record.id,
        "status": current,
        "pid": record.pid if current != "stopped" else 0,
        "bundle": record.bundle,
        "rootfs": "",
        "created": record.created,
        "annotations": record.annotations,
    }
