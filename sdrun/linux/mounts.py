"""Mount plans as data: small operations that describe themselves, then execute.

Targets are paths inside a container root. Each is opened with
openat2(RESOLVE_IN_ROOT) and the mount lands on /proc/self/fd/N, so a symlink
in the image (a volume target pointing at `/`, say) cannot redirect it onto
the host.
"""

from __future__ import annotations

import os

from sdrun.debug import debug
from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import (
    StrPath,
    bind_in_root,
    exists_in_root,
    make_mount_point,
    mount_in_root,
    open_in_root,
    remount_read_only,
)

# Not `typing.TYPE_CHECKING`, nor dataclasses: the in-unit entries import this module,
# and those imports would cost each container start several milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import ClassVar


class MountOperation:
    """One step of a mount plan. A subclass names its fields in FIELDS (its __slots__ too), in
    the order its constructor takes them: that order is also its form in a plan file (to_plan,
    from_plan), which stage0 writes and a stage1 entry reads."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    __slots__ = FIELDS
    target: str
    kinds: ClassVar[dict[str, type[MountOperation]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        MountOperation.kinds[cls.__name__] = cls

    def fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def to_plan(self) -> tuple[object, ...]:
        """The operation as plain values (marshal and JSON can hold them)."""
        return (type(self).__name__, *self.fields())

    @staticmethod
    def from_plan(entry: Sequence[object]) -> MountOperation:
        kind, *fields = entry
        return MountOperation.kinds[str(kind)](*fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MountOperation) and type(self) is type(other) and self.fields() == other.fields()

    def __hash__(self) -> int:
        return hash((type(self), self.fields()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.fields()!r}"

    def describe(self) -> str:
        raise NotImplementedError

    def execute(self, root: StrPath) -> None:
        raise NotImplementedError


class BindMount(MountOperation):
    FIELDS = ("source", "target", "read_only")
    __slots__ = FIELDS

    def __init__(self, source: str, target: str, read_only: bool = False) -> None:
        self.source, self.target, self.read_only = source, target, read_only

    def describe(self) -> str:
        return f"bind {self.source} on {self.target}{' (read-only)' if self.read_only else ''}"

    def execute(self, root: StrPath) -> None:
        bind_in_root(self.source, root, self.target, self.read_only)


class FilesystemMount(MountOperation):
    FIELDS = ("fstype", "target", "flags", "options")
    __slots__ = FIELDS

    def __init__(self, fstype: str, target: str, flags: int = 0, options: str | None = None) -> None:
        self.fstype, self.target, self.flags, self.options = fstype, target, flags, options

    def describe(self) -> str:
        return f"mount {self.fstype} on {self.target}" + (f" ({self.options})" if self.options else "")

    def execute(self, root: StrPath) -> None:
        make_mount_point(root, self.target, directory=True)
        mount_in_root(self.fstype, root, self.target, self.fstype, self.flags, self.options)


def execute_plan(plan: Sequence[MountOperation], root: StrPath) -> None:
    for operation in plan:
        debug("mounts", "%s", operation.describe())
        operation.execute(root)


class MaskPath(MountOperation):
    """Hide target: /dev/null over a file, an empty read-only tmpfs over a directory (runc's masked paths)."""

    FIELDS = ("target",)
    __slots__ = FIELDS

    def __init__(self, target: str) -> None:
        self.target = target

    def describe(self) -> str:
        return f"mask {self.target}"

    def execute(self, root: StrPath) -> None:
        try:
            with open_in_root(root, self.target, os.O_PATH) as fd:
                path = f"/proc/self/fd/{fd}"
                if os.path.isdir(path):
                    sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "size=0")
                else:
                    sc.mount("/dev/null", path, None, sc.MS_BIND)
        except FileNotFoundError:
            pass  # nothing to hide on this kernel


class ReadOnlyPath(MountOperation):
    """Bind target onto itself, read-only (runc's read-only paths); skipped when absent."""

    FIELDS = ("target",)
    __slots__ = FIELDS

    def __init__(self, target: str) -> None:
        self.target = target

    def describe(self) -> str:
        return f"make {self.target} read-only"

    def execute(self, root: StrPath) -> None:
        if not exists_in_root(root, self.target):
            return
        with open_in_root(root, self.target, os.O_PATH) as fd:
            path = f"/proc/self/fd/{fd}"
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        remount_read_only(root, self.target)


class Symlink(MountOperation):
    """Create target as a symlink to link_target unless something is there already."""

    FIELDS = ("target", "link_target")
    __slots__ = FIELDS

    def __init__(self, target: str, link_target: str) -> None:
        self.target, self.link_target = target, link_target

    def describe(self) -> str:
        return f"link {self.target} -> {self.link_target}"

    def execute(self, root: StrPath) -> None:
        parent, _, name = self.target.rpartition("/")
        with open_in_root(root, parent or "/", os.O_PATH | os.O_DIRECTORY) as directory:
            try:  # noqa: SIM105 - contextlib.suppress: an import every container start would pay
                os.symlink(self.link_target, name, dir_fd=directory)
            except FileExistsError:
                pass


class ReadOnlyRoot(MountOperation):
    """The last step of a --read-only container: its root mount becomes read-only."""

    FIELDS = ("target",)
    __slots__ = FIELDS

    def __init__(self, target: str = "/") -> None:
        self.target = target

    def describe(self) -> str:
        return "make the root read-only"

    def execute(self, root: StrPath) -> None:
        remount_read_only(root, "/")
