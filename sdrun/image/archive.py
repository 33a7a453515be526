"""Writing an image out: as an OCI archive (a tar of an OCI layout holding just that image), or as
a docker archive (what `docker save` writes: manifest.json, the config, uncompressed layer tars)."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sdrun.errors import SdrunError
from sdrun.files import atomic_file
from sdrun.image import oci
from sdrun.image.layers import HashingReader, uncompressed
from sdrun.image.store import Image, ImageStore, TamperedBlob


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    archive.addfile(info, io.BytesIO(data))


EXPORT_TRANSPORTS = ("oci-archive", "docker-archive")


def export_image(store: ImageStore, image: Image, target: str) -> Path:
    """`image export IMAGE TARGET`: TARGET is oci-archive:FILE, docker-archive:FILE, or a FILE
    (an OCI archive). Returns the file written."""
    transport, colon, path = target.partition(":")
    if not colon or transport not in EXPORT_TRANSPORTS:
        transport, path = "oci-archive", target
    if not path:
        raise SdrunError(
            f"invalid export target '{target}': give a file", hint="oci-archive:FILE or docker-archive:FILE"
        )
    file = Path(path)
    write = _write_docker_archive if transport == "docker-archive" else _write_oci_archive
    with _written_atomically(file) as archive:
        write(archive, store, image)
    return file


@contextlib.contextmanager
def _written_atomically(target: Path) -> Iterator[tarfile.TarFile]:
    """A tar written beside target and renamed over it once whole; nothing is left on failure."""
    try:
        with (
            atomic_file(target) as stream,
            tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive,
        ):
            yield archive
    except OSError as error:
        raise SdrunError(f"cannot write {target}: {error.strerror}") from None


def _write_oci_archive(archive: tarfile.TarFile, store: ImageStore, image: Image) -> None:
    """Every blob is hashed on its way out: a blob modified in the store is refused, not exported."""
    manifest = image.manifest
    entry = oci.Descriptor(manifest.media_type, manifest.digest, len(manifest.raw))
    if image.names:
        entry = oci.Descriptor(entry.media_type, entry.digest, entry.size, {oci.REF_NAME: image.names[0]})
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry.to_json()]}
    _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    _add_bytes(archive, "index.json", json.dumps(index).encode())
    for blob in (manifest.digest, manifest.config.digest, *(layer.digest for layer in manifest.layers)):
        _add_blob(archive, store, blob)


def _write_docker_archive(archive: tarfile.TarFile, store: ImageStore, image: Image) -> None:
    """docker save's layout: each layer uncompressed as <diff_id hex>.tar, which its diff_id checks;
    RepoTags are the image's names that carry a tag."""
    config_digest = image.manifest.config.digest
    config_name = f"{config_digest.removeprefix('sha256:')}.json"
    _add_bytes(archive, config_name, store.read_blob(config_digest))  # read_blob checks the digest
    layer_names = []
    for layer, diff_id in zip(image.manifest.layers, image.diff_ids, strict=True):
        name = f"{diff_id.removeprefix('sha256:')}.tar"
        if name not in layer_names:
            _add_uncompressed_layer(archive, store, layer.digest, diff_id, name)
        layer_names.append(name)
    tags = [name for name in image.names if "@" not in name]
    listing = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]
    _add_bytes(archive, "manifest.json", json.dumps(listing).encode())


def _add_uncompressed_layer(archive: tarfile.TarFile, store: ImageStore, digest: str, diff_id: str, name: str) -> None:
    # A tar member's size comes first: the layer is decompressed into a temporary file beside the store's blobs.
    with store.blob_path(digest).open("rb") as blob, tempfile.TemporaryFile(dir=store.tmp) as plain:
        with uncompressed(blob) as stream:
            reader = HashingReader(stream)
            _copy(reader.read, plain.write)
            if reader.drain() != diff_id:
                raise TamperedBlob(f"layer {digest} in the image store does not unpack to {diff_id}: not exporting it")
        info = tarfile.TarInfo(name)
        info.size, info.mode = plain.tell(), 0o644
        plain.seek(0)
        archive.addfile(info, plain)


def _copy(read: Callable[[int], bytes], write: Callable[[bytes], object]) -> None:
    while chunk := read(1 << 20):
        write(chunk)


def _add_blob(archive: tarfile.TarFile, store: ImageStore, digest: str) -> None:
    name = f"blobs/sha256/{digest.removeprefix('sha256:')}"
    if name in archive.getnames():
        return
    path = store.blob_path(digest)
    info = archive.gettarinfo(str(path), name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with path.open("rb") as stream:
        reader = HashingReader(stream)
        archive.addfile(info, reader)
        if reader.drain() != digest:
            raise TamperedBlob(f"blob {digest} in the image store has been modified: not exporting it")
