"""Where images come from: a registry, an OCI layout or archive, a docker archive, a rootfs tarball.

Each source hands out the manifest (or index) its reference names, manifests by digest,
and blobs by digest from an offset. sdrun.image.transfer copies from any of them into the
store the same way, verifying everything it receives.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from sdrun.errors import NotFound, SdrunError
from sdrun.image import oci
from sdrun.image.layers import GZIP_MAGIC, ZSTD_MAGIC, HashingReader, LayerError, uncompressed
from sdrun.image.reference import (
    BadReference,
    FileReference,
    RegistryReference,
    parse_local_name,
    parse_registry_reference,
)
from sdrun.image.registry import Registry

CHUNK = 1 << 20
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"


class ImageSource(Protocol):
    description: str

    def top(self) -> tuple[bytes, str]:
        """The manifest or index the reference names, and its media type."""

    def manifest_by_digest(self, digest: str) -> tuple[bytes, str]: ...

    def open_blob(self, digest: str, offset: int) -> tuple[IO[bytes], int]: ...

    def names(self) -> tuple[str, ...]:
        """The names the source gives the image (a registry reference, an archive's tags)."""


class RegistrySource:
    def __init__(self, reference: RegistryReference, *, tls_verify: bool | None, credentials: tuple[str, str] | None):
        self.reference = reference
        self.description = reference.name
        self.registry = Registry(reference, tls_verify=tls_verify, credentials=credentials)

    def top(self) -> tuple[bytes, str]:
        raw, media_type = self.registry.manifest(self.reference.manifest_reference)
        if self.reference.digest and _digest(raw) != self.reference.digest:
            raise SdrunError(f"{self.description}: the registry sent a manifest with digest {_digest(raw)}")
        return raw, media_type

    def manifest_by_digest(self, digest: str) -> tuple[bytes, str]:
        return self.registry.manifest(digest)

    def open_blob(self, digest: str, offset: int) -> tuple[IO[bytes], int]:
        return self.registry.open_blob(digest, offset)

    def names(self) -> tuple[str, ...]:
        return (self.reference.name,)


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _suggested_name(ref: str | None) -> tuple[str, ...]:
    """A layout's ref.name as an image name, as podman loads it: a bare tag `app` is localhost/app:latest."""
    if not ref:
        return ()
    try:
        return (parse_local_name(ref).name,)
    except BadReference:
        return ()


def _choose(entries: list[oci.Descriptor], ref: str | None, where: str) -> oci.Descriptor:
    if ref is not None:
        chosen = [entry for entry in entries if entry.annotations.get(oci.REF_NAME) == ref]
        if not chosen:
            raise NotFound(f"{where} has no image named '{ref}'")
        return chosen[0]
    if len(entries) != 1:
        refs = sorted(entry.annotations.get(oci.REF_NAME, entry.digest) for entry in entries)
        raise SdrunError(
            f"{where} holds {len(entries)} images: name one", hint=f"append :REF, one of {', '.join(refs)}"
        )
    return entries[0]


class OciLayoutSource:
    """oci:DIR[:REF], an OCI image layout directory (what skopeo, umoci and buildah write)."""

    def __init__(self, reference: FileReference) -> None:
        self.path = reference.path
        self.description = f"oci:{self.path}"
        try:
            raw = (self.path / "index.json").read_bytes()
        except OSError as error:
            raise NotFound(f"{self.description} is not an OCI layout: {error.strerror}") from None
        self.entry = _choose(oci.parse_index(raw, f"{self.description}/index.json"), reference.ref, self.description)

    def _blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def top(self) -> tuple[bytes, str]:
        return self.manifest_by_digest(self.entry.digest)

    def manifest_by_digest(self, digest: str) -> tuple[bytes, str]:
        try:
            raw = self._blob(digest).read_bytes()
        except OSError:
            raise NotFound(f"{self.description}: blob {digest} is missing") from None
        return raw, oci.media_type_of(raw, None)

    def open_blob(self, digest: str, offset: int) -> tuple[IO[bytes], int]:
        stream = self._blob(digest).open("rb")
        stream.seek(offset)
        return stream, offset

    def names(self) -> tuple[str, ...]:
        return _suggested_name(self.entry.annotations.get(oci.REF_NAME))


class _TarFiles:
    """Random access to the regular files of an uncompressed tar, by normalized name. Each file
    opens as a reader of its own over the member's bytes: layers are read by parallel threads,
    which must not share tarfile's one file object and its position."""

    def __init__(self, path: Path, description: str) -> None:
        try:
            with tarfile.open(path, "r:") as archive:
                self.members = {
                    member.name.removeprefix("./"): member for member in archive.getmembers() if member.isreg()
                }
        except (OSError, tarfile.TarError) as error:
            raise SdrunError(f"cannot read {description}: {error}") from None
        self.path = path
        self.description = description

    def read(self, name: str) -> bytes:
        with self.open(name) as stream:
            return stream.read()

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name.removeprefix("./"))
        if member is None:
            raise NotFound(f"{self.description} has no file '{name}'")
        if member.issparse():
            raise SdrunError(f"{self.description}: '{name}' is a sparse file, which no image holds")
        return io.BufferedReader(_Window(self.path, member.offset_data, member.size))


class _Window(io.RawIOBase):
    """Bytes start..start+size of a file, read through a file descriptor of their own."""

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._file = path.open("rb", buffering=0)
        self._start, self._size, self._position = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        data = os.pread(self._file.fileno(), wanted, self._start + self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._file.close()
        super().close()


class OciArchiveSource(OciLayoutSource):
    """oci-archive:FILE[:REF], an OCI layout in a tar file."""

    def __init__(self, reference: FileReference) -> None:  # reads the tar, not a directory: no super().__init__
        self.description = f"oci-archive:{reference.path}"
        self.files = _TarFiles(reference.path, self.description)
        raw = self.files.read("index.json")
        self.entry = _choose(oci.parse_index(raw, f"{self.description} index.json"), reference.ref, self.description)

    def manifest_by_digest(self, digest: str) -> tuple[bytes, str]:
        raw = self.files.read(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        return raw, oci.media_type_of(raw, None)

    def open_blob(self, digest: str, offset: int) -> tuple[IO[bytes], int]:
        stream = self.files.open(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        stream.seek(offset)
        return stream, offset


def _layer_media_type(stream: IO[bytes], plain: str) -> str:
    magic = stream.read(4)
    if magic.startswith(GZIP_MAGIC):
        return plain + ".gzip" if plain == DOCKER_LAYER else plain + "+gzip"
    if magic == ZSTD_MAGIC:
        return plain + "+zstd"
    return plain


def _hash_stream(stream: IO[bytes]) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return f"sha256:{hasher.hexdigest()}", size


class _SynthesizedSource:
    """A source whose manifest sdrun writes itself, over blobs it found by name in files."""

    description: str

    def __init__(self) -> None:
        self.blob_files: dict[str, Callable[[], IO[bytes]]] = {}  # digest -> opens the blob
        self.manifest_raw = b""

    def _manifest(self, media_type: str, config: oci.Descriptor, layers: list[oci.Descriptor]) -> None:
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        self.manifest_raw = json.dumps(manifest, indent=2).encode()

    def top(self) -> tuple[bytes, str]:
        return self.manifest_raw, oci.media_type_of(self.manifest_raw, None)

    def manifest_by_digest(self, digest: str) -> tuple[bytes, str]:
        raise NotFound(f"{self.description} has no manifest {digest}")

    def open_blob(self, digest: str, offset: int) -> tuple[IO[bytes], int]:
        stream = self.blob_files[digest]()
        stream.seek(offset)
        return stream, offset


class DockerArchiveSource(_SynthesizedSource):
    """docker-archive:FILE[:NAME:TAG], what `docker save` and `podman save` write: manifest.json,
    a config file and layer tars. sdrun writes the schema2 manifest the archive lacks."""

    def __init__(self, reference: FileReference) -> None:
        super().__init__()
        self.description = f"docker-archive:{reference.path}"
        self.files = _TarFiles(reference.path, self.description)
        listing = oci.load_json(self.files.read("manifest.json"), f"{self.description} manifest.json")
        if not isinstance(listing, list) or not listing:
            raise SdrunError(f"{self.description}: manifest.json lists no images")
        self.entry = self._choose(listing, reference.ref)
        config_raw = self.files.read(self.entry["Config"])
        config = oci.Descriptor(oci.DOCKER_CONFIG, _digest(config_raw), len(config_raw))
        self.blob_files[config.digest] = lambda: io.BytesIO(config_raw)
        layers = []
        for name in self.entry.get("Layers") or []:
            with self.files.open(name) as stream:
                media_type = _layer_media_type(stream, DOCKER_LAYER)
                stream.seek(0)
                digest, size = _hash_stream(stream)
            self.blob_files[digest] = lambda name=name: self.files.open(name)  # type: ignore[misc]
            layers.append(oci.Descriptor(media_type, digest, size))
        self._manifest(oci.DOCKER_MANIFEST, config, layers)

    def _choose(self, listing: list[Any], ref: str | None) -> dict[str, Any]:
        if ref is None:
            if len(listing) > 1:
                raise SdrunError(f"{self.description} holds {len(listing)} images: append :NAME:TAG")
            return dict(listing[0])
        wanted = parse_registry_reference(ref).name
        for entry in listing:
            if wanted in self._tags(entry):
                return dict(entry)
        raise NotFound(f"{self.description} has no image tagged '{ref}'")

    @staticmethod
    def _tags(entry: dict[str, Any]) -> tuple[str, ...]:
        tags = []
        for tag in entry.get("RepoTags") or ():
            try:
                tags.append(parse_registry_reference(tag).name)
            except BadReference:
                continue
        return tuple(tags)

    def names(self) -> tuple[str, ...]:
        return self._tags(self.entry)


class RootfsTarSource(_SynthesizedSource):
    """A plain rootfs tarball (plain, gzip or zstd) as a one-layer image with an empty config."""

    def __init__(self, path: Path, platform: oci.Platform) -> None:
        super().__init__()
        self.description = str(path)
        try:
            with path.open("rb") as stream:
                media_type = _layer_media_type(stream, oci.OCI_LAYER)
                stream.seek(0)
                digest, size = _hash_stream(stream)
                stream.seek(0)
                with uncompressed(stream) as tar:
                    diff_id = HashingReader(tar).drain()
        except OSError as error:
            raise NotFound(f"cannot read {path}: {error.strerror}") from None
        except (EOFError, ValueError) as error:
            raise LayerError(f"{path} is not a readable tarball: {error}") from None
        self.blob_files[digest] = lambda: path.open("rb")
        config = {
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        config_raw = json.dumps(config, indent=2).encode()
        config_descriptor = oci.Descriptor(oci.OCI_CONFIG, _digest(config_raw), len(config_raw))
        self.blob_files[config_descriptor.digest] = lambda: io.BytesIO(config_raw)
        self._manifest(oci.OCI_MANIFEST, config_descriptor, [oci.Descriptor(media_type, digest, size)])

    def names(self) -> tuple[str, ...]:
        return ()
