"""The OCI image format as data: descriptors, manifests, indexes, platforms (Docker schema2 alike)."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.image.reference import DIGEST_PATTERN

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"
MACHINE_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le"}


class ImageFormatError(SdrunError):
    """A manifest, index or config that is not what the OCI spec says it must be."""


class Descriptor(NamedTuple):
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = {}  # noqa: RUF012 - never mutated: records are frozen
    platform: dict[str, Any] = {}  # noqa: RUF012 - never mutated: records are frozen

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    @classmethod
    def from_json(cls, data: Any, what: str) -> Descriptor:
        if not isinstance(data, dict):
            raise ImageFormatError(f"{what}: a descriptor must be an object")
        digest, size = data.get("digest"), data.get("size")
        if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
            raise ImageFormatError(f"{what}: unsupported or invalid digest {digest!r} (sha256 only)")
        if not isinstance(size, int) or size < 0:
            raise ImageFormatError(f"{what}: invalid size {size!r}")
        return cls(
            str(data.get("mediaType", "")),
            digest,
            size,
            dict(data.get("annotations") or {}),
            data.get("platform") or {},
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            data["annotations"] = self.annotations
        if self.platform:
            data["platform"] = self.platform
        return data


class Manifest(NamedTuple):
    """An image manifest: its config and its layers, bottom first."""

    digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes


def load_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ImageFormatError(f"{what} is not valid JSON: {error}") from None


def media_type_of(raw: bytes, given: str | None) -> str:
    """A manifest's media type: its own mediaType field, else what the server said, else guessed from shape."""
    data = load_json(raw, "manifest")
    declared = data.get("mediaType") if isinstance(data, dict) else None
    if isinstance(declared, str) and declared:
        return declared
    if given and given.split(";")[0].strip() not in ("", "application/json", "text/plain"):
        return given.split(";")[0].strip()
    if isinstance(data, dict) and "manifests" in data:
        return OCI_INDEX
    return OCI_MANIFEST


def parse_manifest(raw: bytes, digest: str, media_type: str) -> Manifest:
    if media_type in DOCKER_SCHEMA1:
        raise ImageFormatError("Docker schema 1 manifests are not supported (the registry should convert to schema 2)")
    if media_type not in MANIFEST_TYPES:
        raise ImageFormatError(f"unsupported manifest type '{media_type}'")
    data = load_json(raw, f"manifest {digest}")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ImageFormatError(f"manifest {digest} lists no layers")
    return Manifest(
        digest,
        media_type,
        Descriptor.from_json(data.get("config"), f"manifest {digest} config"),
        tuple(Descriptor.from_json(layer, f"manifest {digest} layer {n}") for n, layer in enumerate(layers)),
        raw,
    )


def parse_index(raw: bytes, digest: str) -> list[Descriptor]:
    data = load_json(raw, f"index {digest}")
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, list):
        raise ImageFormatError(f"index {digest} has no manifests list")
    return [Descriptor.from_json(entry, f"index {digest} entry {n}") for n, entry in enumerate(manifests)]


class Platform(NamedTuple):
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise SdrunError(f"invalid platform '{text}': expected OS/ARCH[/VARIANT], e.g. linux/arm64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine
        return cls("linux", MACHINE_ARCHITECTURES.get(machine, machine))

    def matches(self, platform: dict[str, Any]) -> bool:
        return (
            platform.get("os") == self.os
            and platform.get("architecture") == self.architecture
            and (self.variant is None or platform.get("variant") == self.variant)
        )

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def describe_platform(platform: dict[str, Any]) -> str:
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return text + (f"/{platform['variant']}" if platform.get("variant") else "")


def select_manifest(entries: list[Descriptor], platform: Platform, what: str) -> Descriptor:
    """The index entry for platform; attestation manifests (platform unknown/unknown) never match."""
    for entry in entries:
        if entry.media_type in (*MANIFEST_TYPES, *INDEX_TYPES, "") and platform.matches(entry.platform):
            return entry
    offered = sorted({describe_platform(entry.platform) for entry in entries if entry.platform})
    raise ImageFormatError(
        f"{what} has no image for {platform}", hint=f"it offers {', '.join(offered) or 'no platforms'}; use --platform"
    )
