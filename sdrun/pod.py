"""Pods on disk: one directory per pod, guarded by a lock file, found by name or UUID prefix.

A pod directory is written under a temporary name and renamed into place, so
`pods/<uuid>/` always holds a complete manifest. Its name is reserved by a
symlink `names/<name> -> ../pods/<uuid>` made after the rename: a link whose
target is missing is stale (its pod was removed mid-way) and may be replaced.
Removal is the creation backwards: the name goes, then one rename takes the
directory out of the way (`pods/.removing-<uuid>.<random>`) before it is
deleted, so an interruption leaves a directory that gc deletes, never a pod
half-gone. (A `pods/<uuid>/` without its manifest, from an `rm -rf` cut short,
gc deletes too: PodStore.remove_leftovers.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Set
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import NotFound, SdrunError
from sdrun.files import write_atomically
from sdrun.paths import REMOVING_PREFIX, STAGING_PREFIX, Paths
from sdrun.spec import PodSpec

MANIFEST_VERSION = 1
MIN_PREFIX = 4  # the shortest UUID prefix that names a pod: fewer is too easily a typo's match


class ExitRecord(NamedTuple):
    """How the app ended, as systemd told ExecStopPost (SERVICE_RESULT, EXIT_CODE, EXIT_STATUS)."""

    result: str  # success, exit-code, signal, timeout, ...
    code: str  # exited, killed, dumped
    status: str  # the exit status, or the signal name

    @property
    def exit_status(self) -> int:
        return exit_status_of(self.code, self.status)


def exit_status_of(code: str, status: str) -> int:
    """A shell-style exit status: the app's own, or 128+N when signal N killed it."""
    if code == "exited":
        return int(status)
    import signal

    try:
        number = int(status) if status.isdigit() else int(signal.Signals[f"SIG{status}"])
    except KeyError:
        return 128
    return 128 + number


class Pod(NamedTuple):
    uuid: str
    dir: Path
    spec: PodSpec
    created: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unit(self) -> str:
        return unit_name(self.spec.name, "scope" if self.spec.scope else "service")

    def exit_record(self) -> ExitRecord | None:
        try:
            fields = Paths.exit_record(self.dir).read_text().split()
        except FileNotFoundError:
            return None
        return ExitRecord(*fields) if len(fields) == 3 else None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the pod's lock; fails at once if another sdrun command holds it. The lock a
        PodStore.create() took for this process is the first one handed out."""
        fd = _CREATION_LOCKS.pop(self.dir, None)
        if fd is None:
            fd = _try_lock(Paths.lock(self.dir))
            if fd is None:
                raise SdrunError(f"pod '{self.name}' is busy: another sdrun command holds its lock")
        try:
            yield
        finally:
            os.close(fd)


# Pods this process created, by directory, with the fd that holds their lock since before the
# directory appeared: a concurrent `sdrun gc` never finds a new pod unlocked (and removes it).
_CREATION_LOCKS: dict[Path, int] = {}


def _try_lock(path: Path) -> int | None:
    """An fd holding the lock file's flock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unit_name(pod_name: str, kind: str) -> str:
    return f"sdrun-{pod_name}.{kind}"


class PodStore:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def create(self, spec: PodSpec, pod_uuid: str | None = None) -> Pod:
        """A new pod; pod_uuid is given for an installed unit's pod, whose UUID is stable."""
        pod_uuid = pod_uuid or new_uuid()
        self.paths.pods.mkdir(parents=True, exist_ok=True)
        self.paths.names.mkdir(parents=True, exist_ok=True)
        final = self.paths.pod_dir(pod_uuid)
        staging = self.paths.staging_dir(pod_uuid)
        staging.mkdir(mode=0o700)
        lock = _try_lock(Paths.lock(staging))  # held across the rename: the flock follows the file
        assert lock is not None  # nobody else knows the directory yet
        pod = Pod(pod_uuid, final, spec, time.time())
        manifest = {"version": MANIFEST_VERSION, "uuid": pod_uuid, "created": pod.created, "spec": spec.to_json()}
        try:
            write_atomically(Paths.manifest(staging), json.dumps(manifest, indent=2) + "\n")
            staging.rename(final)
            self._reserve_name(spec.name, pod_uuid)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            os.close(lock)
            raise
        _CREATION_LOCKS[final] = lock
        return pod

    def _reserve_name(self, name: str, pod_uuid: str) -> None:
        link = self.paths.name_link(name)
        for _attempt in range(3):
            try:
                os.symlink(f"../{self.paths.pods.name}/{pod_uuid}", link)  # pods/, or pod-groups/ (sdrun.pods)
                return
            except FileExistsError:
                holder = self._pod_behind(link)
                if holder is not None:
                    raise SdrunError(
                        f"a pod named '{name}' already exists ({holder})",
                        hint=f"remove it with 'sdrun rm {name}' or choose another --name",
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()  # stale: its pod directory is gone
        raise SdrunError(f"could not reserve the pod name '{name}'")

    def _pod_behind(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        pod_uuid = Path(target).name
        return pod_uuid if Paths.manifest(self.paths.pod_dir(pod_uuid)).exists() else None

    def load(self, pod_uuid: str) -> Pod:
        return load_pod(self.paths.pod_dir(pod_uuid))

    def get(self, ref: str) -> Pod:
        """A pod by name, else by a unique prefix of its UUID."""
        if (pod := self.named(ref)) is not None:
            return pod
        matches = self.uuids_with_prefix(ref)
        if len(matches) > 1:
            raise SdrunError(f"'{ref}' matches {len(matches)} pods: give more of the UUID")
        if not matches:
            raise NotFound(f"no such pod: '{ref}'", hint="'sdrun list' shows the pods")
        return self.load(matches[0])

    def named(self, name: str) -> Pod | None:
        if name and "/" not in name and (pod_uuid := self._pod_behind(self.paths.name_link(name))):
            return self.load(pod_uuid)
        return None

    def uuids_with_prefix(self, prefix: str) -> list[str]:
        """The UUIDs that start with prefix, if it is long enough to be one (MIN_PREFIX)."""
        return [uuid for uuid in self.uuids() if uuid.startswith(prefix)] if len(prefix) >= MIN_PREFIX else []

    def uuids(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self.paths.pods) if not entry.name.startswith("."))
        except FileNotFoundError:
            return []

    def all(self) -> list[Pod]:
        pods = []
        for pod_uuid in self.uuids():
            with contextlib.suppress(NotFound, ValueError, KeyError):
                pods.append(self.load(pod_uuid))
        return pods

    def remove(self, pod: Pod) -> None:
        """Remove the pod's name, then its directory. The name first: while the directory is in
        place, nobody else may take the name (the link is not stale)."""
        link = self.paths.name_link(pod.name)
        if self._pod_behind(link) == pod.uuid:
            link.unlink()
        trash = self.paths.removing_dir(pod.uuid)
        try:
            pod.dir.rename(trash)  # the flock a caller holds goes with it
        except FileNotFoundError:
            return  # removed already
        shutil.rmtree(trash, ignore_errors=True)

    def remove_leftovers(self, in_units: Set[str] = frozenset()) -> list[str]:
        """What crashes and interruptions left (a pod half-created or half-removed, a name whose pod
        is gone), if nobody holds its lock. in_units: UUIDs of the pods systemd has units of, whose
        directories stay whatever they hold."""
        removed = []
        for entry in self._entries(self.paths.pods):
            if entry.name.startswith((STAGING_PREFIX, REMOVING_PREFIX)):
                leftover = True  # its creator or remover died, or is at work and holds its lock
            else:  # a pod's directory that lost its manifest, and is no unit's: it was being removed
                leftover = entry.name not in in_units and not Paths.manifest(Path(entry.path)).exists()
            if leftover and (lock := _try_lock(Paths.lock(Path(entry.path)))) is not None:
                shutil.rmtree(entry.path, ignore_errors=True)
                os.close(lock)
                removed.append(entry.path)
        for entry in self._entries(self.paths.names):
            if self._pod_behind(Path(entry.path)) is None:
                os.unlink(entry.path)
                removed.append(entry.path)
        return removed

    @staticmethod
    def _entries(directory: Path) -> list[os.DirEntry[str]]:
        try:
            return list(os.scandir(directory))
        except FileNotFoundError:
            return []


def load_pod(directory: Path) -> Pod:
    try:
        data = json.loads(Paths.manifest(directory).read_text())
    except FileNotFoundError:
        raise NotFound(f"pod directory {directory} has no manifest") from None
    return Pod(data["uuid"], directory, PodSpec.from_json(data["spec"]), data["created"])


def new_uuid() -> str:
    """A random (version 4, RFC 4122) UUID, as uuid.uuid4() makes it. The uuid module itself
    costs every pod's creation ~2 ms of imports (platform, among others)."""
    value = int.from_bytes(os.urandom(16), "big")
    value = value & ~(0xF000 << 64) | (4 << 76)  # version 4
    value = value & ~(0xC000 << 48) | (0x8000 << 48)  # the RFC 4122 variant
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
