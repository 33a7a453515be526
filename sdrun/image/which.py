"""`sdrun image which`: which images ship a path, or a file of some name, and which layer adds it.

An absolute PATH is looked up in each layer tree, top layer first: the first layer that
has it (or a whiteout for it) decides. A bare NAME is searched for in every tree. Trees
are shared between images, so each is walked once.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from sdrun.image.store import Image, ImageStore
from sdrun.linux import syscalls as sc

BENEATH = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS


@dataclass(frozen=True)
class Match:
    image: Image
    path: str
    layer_digest: str

    @property
    def image_name(self) -> str:
        return self.image.names[0] if self.image.names else self.image.digest

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image_name, "digest": self.image.digest, "path": self.path, "layer": self.layer_digest}


def _lookup(tree: str, path: str) -> os.stat_result | None:
    """The entry at path in one tree, not following symlinks on the way (a tree is one layer, not a root)."""
    try:
        root = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fd = sc.openat2(root, path.strip("/") or ".", os.O_PATH | os.O_NOFOLLOW, BENEATH)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _is_whiteout(entry: os.stat_result) -> bool:
    return stat.S_ISCHR(entry.st_mode) and entry.st_rdev == 0


def _names_in(tree: str, name: str) -> list[str]:
    found = []
    for directory, directories, files in os.walk(tree):
        for entry in (*files, *directories):
            if entry == name:
                path = os.path.join(directory, entry)
                if not _is_whiteout(os.lstat(path)):
                    found.append("/" + os.path.relpath(path, tree))
    return sorted(found)


def find_in_images(store: ImageStore, images: list[Image], path: str) -> list[Match]:
    walked: dict[str, list[str]] = {}
    matches = []
    for image in images:
        layers = list(zip(image.manifest.layers, image.diff_ids, strict=False))
        if path.startswith("/"):
            for layer, diff_id in reversed(layers):
                entry = _lookup(str(store.tree_root(diff_id)), path)
                if entry is not None:
                    if not _is_whiteout(entry):
                        matches.append(Match(image, path, layer.digest))
                    break
            continue
        for layer, diff_id in layers:
            tree = str(store.tree_root(diff_id))
            if tree not in walked:
                walked[tree] = _names_in(tree, path)
            matches += [Match(image, found, layer.digest) for found in walked[tree]]
    return matches
