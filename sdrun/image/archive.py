"""Writing an image out as an OCI archive: a tar of an OCI layout holding just that image."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from sdrun.errors import SdrunError
from sdrun.image import oci
from sdrun.image.layers import HashingReader
from sdrun.image.store import Image, ImageStore, TamperedBlob


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    archive.addfile(info, io.BytesIO(data))


def export_oci_archive(store: ImageStore, image: Image, target: Path) -> None:
    """Every blob is hashed on its way out: a blob modified in the store is refused, not exported."""
    manifest = image.manifest
    entry = oci.Descriptor(manifest.media_type, manifest.digest, len(manifest.raw))
    if image.names:
        entry = oci.Descriptor(entry.media_type, entry.digest, entry.size, {oci.REF_NAME: image.names[0]})
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry.to_json()]}
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as archive:
            _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            _add_bytes(archive, "index.json", json.dumps(index).encode())
            for blob in (manifest.digest, manifest.config.digest, *(layer.digest for layer in manifest.layers)):
                _add_blob(archive, store, blob)
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise SdrunError(f"cannot write {target}: {error.strerror}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
