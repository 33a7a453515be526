"""`sdrun image which`: which images ship a path, or a file of some name, and which layer it comes from.

A path is resolved the way a pod's overlayfs would show it, over the image's layer trees:
a directory merges with the directories below it until one is opaque
(trusted.overlay.opaque=y); a whiteout (a 0/0 character device) or any non-directory hides
everything below it at that name; symlinked directories on the way are followed inside the
image (absolute targets from the image's root, at most 40 of them). The last component is
not followed: the entry at the path is what is reported, with the layer the visible entry
comes from. A bare NAME is searched for in every tree (each tree once: trees are shared),
and each path found is then resolved in each image like an absolute one, so a file that an
upper layer deletes or hides is not reported.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import Any, NamedTuple

from sdrun.image.layers import OPAQUE_XATTR
from sdrun.image.store import Image, ImageStore
from sdrun.linux import syscalls as sc

BENEATH = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
MAX_SYMLINKS = 40  # the kernel's limit on one path lookup


class Match(NamedTuple):
    image: Image
    path: str  # as asked (or, for a NAME, as found)
    resolved: str  # the path with the symlinks on the way followed
    layer_digest: str

    @property
    def image_name(self) -> str:
        return self.image.names[0] if self.image.names else self.image.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image_name,
            "digest": self.image.digest,
            "path": self.path,
            "resolved": self.resolved,
            "layer": self.layer_digest,
        }


@contextlib.contextmanager
def _opened(tree: str, parts: list[str]) -> Iterator[int | None]:
    """An O_PATH fd of the entry at parts in one tree (the last component not followed), or None.
    Every component on the way must be a real directory of that tree: one tree is one layer, not a root."""
    try:
        root = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        fd: int | None = sc.openat2(root, "/".join(parts) or ".", os.O_PATH | os.O_NOFOLLOW, BENEATH)
    except OSError:
        fd = None
    finally:
        os.close(root)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _lstat(tree: str, parts: list[str]) -> os.stat_result | None:
    with _opened(tree, parts) as fd:
        return None if fd is None else os.fstat(fd)


def _readlink(tree: str, parts: list[str]) -> str:
    with _opened(tree, parts[:-1]) as parent:
        assert parent is not None
        return os.readlink(parts[-1], dir_fd=parent)


def _is_opaque(tree: str, parts: list[str]) -> bool:
    with _opened(tree, parts) as fd:
        if fd is None:
            return False
        try:
            return os.getxattr(f"/proc/self/fd/{fd}", OPAQUE_XATTR) == b"y"
        except OSError:
            return False


def _is_whiteout(entry: os.stat_result) -> bool:
    return stat.S_ISCHR(entry.st_mode) and entry.st_rdev == 0


class _Entry(NamedTuple):
    layer: int  # index into the stack, topmost first
    stat: os.stat_result
    below: tuple[int, ...]  # for a directory: the layers whose directories merge into it, topmost first


class LayerStack:
    """An image's layer trees seen as one filesystem, as overlayfs merges them."""

    def __init__(self, trees: list[str]) -> None:
        self.trees = trees  # topmost first

    def _child(self, layers: tuple[int, ...], parts: list[str]) -> _Entry | None:
        """The entry at parts, given the layers (topmost first) whose directories make up its parent."""
        for position, layer in enumerate(layers):
            found = _lstat(self.trees[layer], parts)
            if found is None:
                continue
            if _is_whiteout(found):
                return None
            if not stat.S_ISDIR(found.st_mode):
                return _Entry(layer, found, ())
            merged = [layer]
            if not _is_opaque(self.trees[layer], parts):
                for lower in layers[position + 1 :]:
                    below = _lstat(self.trees[lower], parts)
                    if below is None:
                        continue
                    if not stat.S_ISDIR(below.st_mode):
                        break  # a file or a whiteout there hides the rest
                    merged.append(lower)
                    if _is_opaque(self.trees[lower], parts):
                        break
            return _Entry(layer, found, tuple(merged))
        return None

    def lookup(self, path: str) -> tuple[str, int] | None:
        """The resolved path of path's entry and the layer it comes from; None if the image has none."""
        everything = tuple(range(len(self.trees)))
        resolved: list[str] = []
        merged: list[tuple[int, ...]] = [everything]  # the layers of each directory in resolved, root first
        pending = [part for part in path.split("/") if part not in ("", ".")]
        links = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if resolved:
                    resolved.pop()
                    merged.pop()
                continue
            entry = self._child(merged[-1], [*resolved, name])
            if entry is None:
                return None
            if not pending:
                return "/" + "/".join([*resolved, name]), entry.layer
            if stat.S_ISLNK(entry.stat.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return None
                target = _readlink(self.trees[entry.layer], [*resolved, name])
                pending = [part for part in target.split("/") if part not in ("", ".")] + pending
                if target.startswith("/"):
                    resolved, merged = [], [everything]
                continue
            if not entry.below:
                return None  # not a directory
            resolved.append(name)
            merged.append(entry.below)
        return None  # the root itself: every layer has it


def _names_in(tree: str, name: str) -> list[str]:
    """Paths (from the tree's root) of the entries called name in one tree, whiteouts left out."""
    found = []
    for directory, directories, files in os.walk(tree):
        for entry in (*files, *directories):
            if entry == name:
                path = os.path.join(directory, entry)
                if not _is_whiteout(os.lstat(path)):
                    found.append("/" + os.path.relpath(path, tree))
    return found


def find_in_images(store: ImageStore, images: list[Image], path: str) -> list[Match]:
    walked: dict[str, list[str]] = {}
    matches = []
    for image in images:
        layers = list(zip(image.manifest.layers, image.diff_ids, strict=False))[::-1]  # topmost first
        stack = LayerStack([str(store.tree_root(diff_id)) for _, diff_id in layers])
        if path.startswith("/"):
            candidates = [path]
        else:
            for tree in stack.trees:
                if tree not in walked:
                    walked[tree] = _names_in(tree, path)
            candidates = sorted({found for tree in stack.trees for found in walked[tree]})
        seen: set[str] = set()
        for candidate in candidates:
            visible = stack.lookup(candidate)
            if visible is None or visible[0] in seen:
                continue
            seen.add(visible[0])
            resolved, layer = visible
            shown = candidate if path.startswith("/") else resolved
            matches.append(Match(image, shown, resolved, layers[layer][0].digest))
    return matches
