"""The image store: an OCI image layout under <root>/images, and the layer trees pods stack.

    images/oci-layout, index.json      the OCI layout; index.json names every image (ref.name = HOST/REPO:TAG)
    images/blobs/sha256/<hex>          manifests, configs, layers: each verified before it is renamed here
    images/trees/<hex>/root            a layer extracted once (hex of its diff_id), shared read-only by pods
    images/trees/<hex>/rendered        written last: a tree without it is half-made and never used
    images/tmp/                        partial downloads (resumed by the next pull) and locks
    images/lock                        flock: shared by pulls and runs, exclusive for rm and gc

Crash safety comes from the order of writes: a blob is visible only once verified and
fsynced; a tree only once its marker is; an image is named in index.json only once
its manifest, config, layers and trees are all in place. A failed pull takes away the
blobs and trees it brought (ImageStore.discard); whatever a killed pull left is resumed by
the next one and removed by `image gc`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from sdrun.debug import debug
from sdrun.errors import NotFound, SdrunError
from sdrun.files import fsync_directory, write_atomically
from sdrun.image import oci
from sdrun.image.layers import extract_layer
from sdrun.image.reference import DIGEST_PATTERN, BadReference, parse_local_name, parse_registry_reference
from sdrun.linux import syscalls as sc

CHUNK = 1 << 20
RENDERED = "rendered"
# Opens a blob's source at a byte offset (a resumed download); returns the stream and the offset
# it really starts at (0 when the source cannot resume).
BlobOpener = Callable[[int], tuple[IO[bytes], int]]
Progress = Callable[[int], None]


class TamperedBlob(SdrunError):
    """A blob whose content does not match its digest or size."""


class Image(NamedTuple):
    """An image in the store: its manifest, parsed config, and the names index.json gives it."""

    manifest: oci.Manifest
    config: dict[str, Any]
    names: tuple[str, ...]
    index_digest: str | None = None  # the multi-platform index it was chosen from, if any

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def diff_ids(self) -> tuple[str, ...]:
        rootfs = self.config.get("rootfs") or {}
        return tuple(rootfs.get("diff_ids") or ())

    @property
    def size(self) -> int:
        return self.manifest.config.size + sum(layer.size for layer in self.manifest.layers)


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class ImageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.blobs = directory / "blobs" / "sha256"
        self.trees = directory / "trees"
        self.tmp = directory / "tmp"
        self.index_file = directory / "index.json"

    # --- locking ---

    @contextlib.contextmanager
    def _flock(self, name: str, operation: int) -> Iterator[None]:
        self.prepare()
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Held while pulling or starting a pod: gc and rm wait for it."""
        return self._flock("lock", fcntl.LOCK_SH)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("lock", fcntl.LOCK_EX)

    def prepare(self) -> None:
        if self.tmp.is_dir():
            return
        for directory in (self.blobs, self.trees, self.tmp):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        layout = self.directory / "oci-layout"
        if not layout.exists():
            write_atomically(layout, b'{"imageLayoutVersion": "1.0.0"}\n')

    # --- blobs ---

    def blob_path(self, digest: str) -> Path:
        if not DIGEST_PATTERN.fullmatch(digest):
            raise SdrunError(f"invalid digest '{digest}'")
        return self.blobs / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config), checked against its digest on every read."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the image store", hint="pull the image again") from None
        if digest_of(data) != digest:
            raise TamperedBlob(f"blob {digest} in the image store has been modified: its digest is {digest_of(data)}")
        return data

    def put_bytes(self, data: bytes) -> str:
        digest = digest_of(data)
        if not self.has_blob(digest):
            self.put_blob(digest, len(data), lambda _offset: (io.BytesIO(data), 0), source="memory")
        return digest

    def put_blob(
        self, digest: str, size: int, open_source: BlobOpener, *, source: str, progress: Progress | None = None
    ) -> None:
        """Copy a blob in: into tmp/<hex>.partial (resumed if a killed pull left one), verify, fsync, rename.

        What a partial file holds is trusted for nothing: it is hashed with the rest, and the
        whole file must match the digest. A resumed copy that does not match (a prefix damaged
        on disk, or written from other content) is thrown away and fetched once more from byte 0;
        only a mismatch of a copy fetched whole is the source's fault."""
        final = self.blob_path(digest)
        partial = self.tmp / f"{final.name}.partial"
        with self._locked_partial(partial) as stream:  # a concurrent pull of the same blob waits here
            if final.exists():
                partial.unlink()  # the other pull finished it; a pull waiting on this file opens the path again
                return
            if self._fill(stream, digest, size, open_source, progress, resume=True) is not None:
                debug("image", "blob %s: the partial download did not match: fetching it whole", digest)
                wrong = self._fill(stream, digest, size, open_source, progress, resume=False)
                if wrong is not None:
                    partial.unlink()
                    raise TamperedBlob(f"blob {digest} from {source} does not match its descriptor: got {wrong}")
            os.fsync(stream.fileno())
            partial.rename(final)
        fsync_directory(self.blobs)

    @contextlib.contextmanager
    def _locked_partial(self, partial: Path) -> Iterator[IO[bytes]]:
        """The partial file, locked. A pull that held the lock may have unlinked the file we opened
        (a mismatch) or renamed it into blobs/: then the lock is on a dead inode; open the path again."""
        while True:
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            stream = os.fdopen(fd, "r+b")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(partial)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            stream.close()
        with stream:
            yield stream

    @staticmethod
    def _fill(
        stream: IO[bytes],
        digest: str,
        size: int,
        open_source: BlobOpener,
        progress: Progress | None,
        *,
        resume: bool,
    ) -> str | None:
        """Make the partial file hold the blob: keep (if resume) what it has, fetch the rest. None when
        the whole file then has the blob's size and digest, else what it has instead."""
        hasher, offset = ImageStore._hash_partial(stream, size) if resume else (hashlib.sha256(), 0)
        stream.seek(offset)
        stream.truncate()
        if progress and offset:
            progress(offset)
        counted = offset
        if offset < size:  # a complete partial needs no request (a Range past the end is a 416)
            if offset:
                debug("image", "blob %s: resuming at byte %d of %d", digest, offset, size)
            source_stream, start = open_source(offset)
            with source_stream:
                if start != offset:  # the source could not resume: start over
                    debug("image", "blob %s: the source cannot resume: fetching from byte 0", digest)
                    stream.seek(0)
                    stream.truncate()
                    hasher, offset = hashlib.sha256(), 0
                while chunk := source_stream.read(CHUNK):
                    offset += len(chunk)
                    if offset > size:
                        break
                    hasher.update(chunk)
                    stream.write(chunk)
                    counted += len(chunk)
                    if progress:
                        progress(len(chunk))
            stream.flush()
        actual = f"sha256:{hasher.hexdigest()}"
        if offset == size and actual == digest:
            return None
        if progress:
            progress(-counted)  # the bytes counted so far are fetched again, or not at all
        return actual if offset == size else f"{offset if offset < size else 'more than ' + str(size)} bytes"

    @staticmethod
    def _hash_partial(stream: IO[bytes], size: int) -> tuple[Any, int]:
        """The hash of what a partial file holds, and its length; an empty start if it is too long."""
        hasher = hashlib.sha256()
        stream.seek(0, os.SEEK_END)
        if stream.tell() > size:
            stream.truncate(0)
        stream.seek(0)
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
        return hasher, stream.tell()

    # --- trees ---

    def tree_root(self, diff_id: str) -> Path:
        return self.trees / diff_id.removeprefix("sha256:") / "root"

    def has_tree(self, diff_id: str) -> bool:
        return (self.trees / diff_id.removeprefix("sha256:") / RENDERED).exists()

    def render_tree(self, diff_id: str, layer_digest: str) -> Path:
        """Extract a layer once; the marker, written last, makes the tree usable."""
        if not DIGEST_PATTERN.fullmatch(diff_id):
            raise SdrunError(f"invalid diff_id '{diff_id}' in the image config")
        tree = self.trees / diff_id.removeprefix("sha256:")
        with self._flock(f"tmp/{tree.name}.tree-lock", fcntl.LOCK_EX):
            if (tree / RENDERED).exists():
                return tree / "root"
            shutil.rmtree(tree, ignore_errors=True)  # a half-made tree from a killed pull
            (tree / "root").mkdir(mode=0o755, parents=True)
            try:
                with self.blob_path(layer_digest).open("rb") as blob:
                    actual = extract_layer(blob, str(tree / "root"))
            except BaseException:
                shutil.rmtree(tree, ignore_errors=True)  # what a layer refused halfway had written
                raise
            if actual != diff_id:
                shutil.rmtree(tree, ignore_errors=True)
                raise TamperedBlob(f"layer {layer_digest} unpacks to {actual}, but the image config says {diff_id}")
            root_fd = os.open(tree / "root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sc.syncfs(root_fd)  # every file of the tree is on disk before the marker is
            finally:
                os.close(root_fd)
            write_atomically(tree / RENDERED, f"{layer_digest}\n".encode())
        return tree / "root"

    # --- index.json ---

    def index_entries(self) -> list[oci.Descriptor]:
        try:
            raw = self.index_file.read_bytes()
        except FileNotFoundError:
            return []
        return oci.parse_index(raw, "index.json of the image store")

    def _write_index(self, entries: list[oci.Descriptor]) -> None:
        index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry.to_json() for entry in entries]}
        write_atomically(self.index_file, (json.dumps(index, indent=2) + "\n").encode())

    @contextlib.contextmanager
    def _editing_index(self) -> Iterator[list[oci.Descriptor]]:
        with self._flock("index.lock", fcntl.LOCK_EX):
            entries = self.index_entries()
            yield entries
            self._write_index(entries)

    def tag(self, manifest: oci.Manifest, name: str, index_digest: str | None = None) -> None:
        """Give the image a name: the name moves to it from whichever image had it."""
        annotations = {oci.REF_NAME: name}
        if index_digest:
            annotations["io.sdrun.index.digest"] = index_digest
        entry = oci.Descriptor(manifest.media_type, manifest.digest, len(manifest.raw), annotations)
        with self._editing_index() as entries:
            entries[:] = [old for old in entries if old.annotations.get(oci.REF_NAME) != name] + [entry]

    def untag(self, name: str) -> None:
        """Take one name away; the image keeps its others (and its content until nothing names or uses it)."""
        with self._editing_index() as entries:
            entries[:] = [entry for entry in entries if entry.annotations.get(oci.REF_NAME) != name]

    # --- images ---

    def load(self, digest: str, names: tuple[str, ...] = (), index_digest: str | None = None) -> Image:
        raw = self.read_blob(digest)
        manifest = oci.parse_manifest(raw, digest, oci.media_type_of(raw, None))
        config = oci.load_json(self.read_blob(manifest.config.digest), f"config of {digest}")
        if not isinstance(config, dict):
            raise oci.ImageFormatError(f"config of {digest} is not an object")
        return Image(manifest, config, names, index_digest)

    def images(self) -> list[Image]:
        by_digest: dict[str, list[oci.Descriptor]] = {}
        for entry in self.index_entries():
            by_digest.setdefault(entry.digest, []).append(entry)
        return [self._image_of(entries) for entries in by_digest.values()]

    def _image_of(self, entries: list[oci.Descriptor]) -> Image:
        names = tuple(entry.annotations.get(oci.REF_NAME, "") for entry in entries)
        index_digest = next(
            (e.annotations["io.sdrun.index.digest"] for e in entries if "io.sdrun.index.digest" in e.annotations), None
        )
        return self.load(entries[0].digest, names, index_digest)

    @staticmethod
    def _name_candidates(text: str) -> list[str]:
        """The names text may mean, the likeliest first: as given, a local image's (localhost/, as
        podman names them), the registry's it names (docker.io by default)."""
        candidates = [text]
        with contextlib.suppress(BadReference):
            if not text.startswith("docker://"):
                candidates.append(parse_local_name(text).name)
            candidates.append(parse_registry_reference(text.removeprefix("docker://")).name)
        return list(dict.fromkeys(candidates))

    def _entries_named(self, entries: list[oci.Descriptor], text: str) -> list[oci.Descriptor]:
        for candidate in self._name_candidates(text):
            named = [entry for entry in entries if entry.annotations.get(oci.REF_NAME) == candidate]
            if named:
                return named
        return []

    def name_of(self, text: str) -> str | None:
        """The stored name text means (as given or normalized), if it names an image and is no digest."""
        named = self._entries_named(self.index_entries(), text)
        return named[0].annotations[oci.REF_NAME] if named else None

    def find(self, text: str) -> Image | None:
        """An image by name (as given or normalized), by digest, or by a unique digest prefix of 8+ digits."""
        entries = self.index_entries()
        by_name = self._entries_named(entries, text)
        if not by_name:
            hex_part = text.rpartition("@")[2].removeprefix("sha256:")
            if len(hex_part) >= 8 and all(c in "0123456789abcdef" for c in hex_part):
                by_name = [
                    entry
                    for entry in entries
                    if entry.hex.startswith(hex_part)
                    or entry.annotations.get("io.sdrun.index.digest", "").removeprefix("sha256:").startswith(hex_part)
                ]
        digests = {entry.digest for entry in by_name}
        if len(digests) > 1:
            raise SdrunError(f"'{text}' matches {len(digests)} images: give more of the digest")
        if not digests:
            return None
        (digest,) = digests
        return self._image_of([entry for entry in entries if entry.digest == digest])

    def get(self, text: str) -> Image:
        image = self.find(text)
        if image is None:
            raise NotFound(f"no such image: '{text}'", hint="'sdrun image list' shows the images")
        return image

    def trees_of(self, image: Image) -> list[Path]:
        """The image's layer trees as overlayfs lowerdirs: topmost first, each once."""
        lowers: list[Path] = []
        for diff_id in reversed(image.diff_ids):
            root = self.tree_root(diff_id)
            if root not in lowers:
                lowers.append(root)
        return lowers

    def is_complete(self, image: Image) -> bool:
        return all(self.has_tree(diff_id) for diff_id in image.diff_ids)

    # --- garbage collection (under the exclusive lock) ---

    def _in_use(self, used_images: set[str], used_trees: set[Path]) -> tuple[set[str], set[str]]:
        """The blobs (digests) and trees (hex names) that a named image or a pod needs."""
        keep_blobs: set[str] = set()
        keep_trees = {path.parent.name for path in used_trees}
        for digest in {entry.digest for entry in self.index_entries()} | used_images:
            with contextlib.suppress(SdrunError):
                image = self.load(digest)
                keep_blobs |= {digest, image.manifest.config.digest, *(layer.digest for layer in image.manifest.layers)}
                keep_trees |= {diff_id.removeprefix("sha256:") for diff_id in image.diff_ids}
        return keep_blobs, keep_trees

    def collect_garbage(self, used_images: set[str], used_trees: set[Path]) -> list[str]:
        """Remove what no named image and no pod uses, and every leftover of an interrupted pull."""
        keep_blobs, keep_trees = self._in_use(used_images, used_trees)
        removed = []
        for entry in self._scan(self.blobs):
            if f"sha256:{entry.name}" not in keep_blobs:
                os.unlink(entry.path)
                removed.append(f"blob sha256:{entry.name}")
        for entry in self._scan(self.trees):
            if entry.name not in keep_trees or not os.path.exists(os.path.join(entry.path, RENDERED)):
                shutil.rmtree(entry.path)
                removed.append(f"tree {entry.name}")
        for entry in self._scan(self.tmp):
            os.unlink(entry.path)
            removed.append(f"temporary {entry.name}")
        return removed

    def discard(self, blobs: Iterable[str], diff_ids: Iterable[str]) -> None:
        """After a failed pull: remove the blobs and trees it brought that no named image uses, when
        nothing else holds the store (a concurrent pull may be using them): else `image gc` will."""
        try:
            with self._flock("lock", fcntl.LOCK_EX | fcntl.LOCK_NB):
                keep_blobs, keep_trees = self._in_use(set(), set())
                for digest in set(blobs) - keep_blobs:
                    with contextlib.suppress(FileNotFoundError, SdrunError):
                        self.blob_path(digest).unlink()
                for diff_id in set(diff_ids):
                    if DIGEST_PATTERN.fullmatch(diff_id) and diff_id.removeprefix("sha256:") not in keep_trees:
                        shutil.rmtree(self.trees / diff_id.removeprefix("sha256:"), ignore_errors=True)
        except BlockingIOError:
            debug("image", "the store is busy: `image gc` removes what the failed pull brought")

    def delete_content(self, image: Image, used_images: set[str], used_trees: set[Path]) -> list[str]:
        """`image rm` of an image's last name: its blobs and trees go, but for those another image
        or a pod still uses (layers are shared)."""
        keep_blobs, keep_trees = self._in_use(used_images, used_trees)
        removed = []
        for diff_id in image.diff_ids:
            tree = self.trees / diff_id.removeprefix("sha256:")
            if tree.name not in keep_trees and tree.exists():
                shutil.rmtree(tree)
                removed.append(f"tree {tree.name}")
        manifest = image.manifest
        for digest in dict.fromkeys((manifest.digest, manifest.config.digest, *(x.digest for x in manifest.layers))):
            if digest not in keep_blobs and self.has_blob(digest):
                self.blob_path(digest).unlink()
                removed.append(f"blob {digest}")
        return removed

    @staticmethod
    def _scan(directory: Path) -> list[os.DirEntry[str]]:
        try:
            return list(os.scandir(directory))
        except FileNotFoundError:
            return []
