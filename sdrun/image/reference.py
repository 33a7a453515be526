"""Image references: what a user may name an image by, parsed into one of the transports.

NAME[:TAG] | NAME@sha256:HEX          the store (as given, as localhost/NAME), else the registry (docker.io by default)
docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
oci:DIR[:REF]   oci-archive:FILE[:REF]   docker-archive:FILE[:NAME[:TAG]]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError

DEFAULT_REGISTRY = "docker.io"
LOCAL_HOST = "localhost"  # the host of local images' names (podman's), which no registry serves
DEFAULT_TAG = "latest"
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
# The distribution spec's grammar, loosely: lowercase path components, a tag of word characters.
REPO_PATTERN = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


class BadReference(SdrunError):
    """A reference that does not parse."""


class RegistryReference(NamedTuple):
    """HOST/REPO plus a tag or a digest: where a registry keeps an image."""

    host: str  # as given, with its port; docker.io for the default registry
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The canonical name the store records: HOST/REPO:TAG (or @DIGEST when pulled by digest)."""
        return f"{self.host}/{self.repository}" + (f":{self.tag}" if self.tag else f"@{self.digest}")

    @property
    def endpoint(self) -> str:
        """The host the HTTP API answers on (docker.io's API is on registry-1.docker.io)."""
        return "registry-1.docker.io" if self.host == DEFAULT_REGISTRY else self.host

    @property
    def manifest_reference(self) -> str:
        return self.digest or self.tag or DEFAULT_TAG


class FileReference(NamedTuple):
    """An image in a local OCI layout, OCI archive or docker archive."""

    transport: str  # one of FILE_TRANSPORTS
    path: Path
    ref: str | None = None  # the layout's ref.name, or the archive's NAME:TAG


def parse_registry_reference(text: str) -> RegistryReference:
    """NAME[:TAG][@DIGEST] as docker reads it: a first component with a '.' or ':' (or localhost) is a host."""
    remainder, _, digest = text.partition("@")
    if digest and not DIGEST_PATTERN.fullmatch(digest):
        raise BadReference(f"invalid image reference '{text}': expected a digest like sha256:<64 hex digits>")
    first, slash, rest = remainder.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DEFAULT_REGISTRY, remainder
    path, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if not REPO_PATTERN.fullmatch(path) or (colon and not TAG_PATTERN.fullmatch(tag)):
        raise BadReference(f"invalid image reference '{text}'", hint="expected [HOST[:PORT]/]REPO[:TAG|@DIGEST]")
    if host == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not colon and not digest:
        tag = DEFAULT_TAG
    return RegistryReference(host, path, tag or None, digest or None)


def parse_local_name(text: str) -> RegistryReference:
    """A name for an image that comes from no registry (`image import`'s NAME, an OCI layout's or
    archive's ref.name) as podman gives it: without a registry host, localhost/NAME[:latest]."""
    reference = parse_registry_reference(text)
    if reference.host != DEFAULT_REGISTRY or text.startswith(f"{DEFAULT_REGISTRY}/"):
        return reference
    return parse_registry_reference(f"{LOCAL_HOST}/{text}")


def parse_file_reference(transport: str, rest: str) -> FileReference:
    """PATH[:REF]: a path that exists as given wins, so a ':' in a file name still works."""
    if not rest:
        raise BadReference(f"invalid reference '{transport}:': give a path")
    if Path(rest).exists() or ":" not in rest:
        return FileReference(transport, Path(rest).absolute())
    path, _, ref = rest.partition(":")
    return FileReference(transport, Path(path).absolute(), ref or None)


def parse_reference(text: str) -> RegistryReference | FileReference:
    transport, colon, rest = text.partition(":")
    if colon and transport in FILE_TRANSPORTS:
        return parse_file_reference(transport, rest)
    if colon and transport == "docker" and rest.startswith("//"):
        return parse_registry_reference(rest[2:])
    return parse_registry_reference(text)
