"""Where an image's signatures are: registries.d(5), the lookaside, and sigstore attachments.

registries.d: every *.yaml of the directory (`/etc/containers/registries.d`, or --registries.d),
merged (a scope, or default-docker, defined twice is an error), as containers/image reads them:

    default-docker: {lookaside: URL, use-sigstore-attachments: BOOL}
    docker: {SCOPE: {lookaside: URL, lookaside-staging: URL, use-sigstore-attachments: BOOL}}

The most specific scope that sets a value wins (the full reference, its namespaces as the policy
orders them, then default-docker). Without a lookaside, root's default
file:///var/lib/containers/sigstore; without use-sigstore-attachments, none are read.

Simple signatures: <lookaside>/<repository path>@sha256=<hex>/signature-N for N = 1, 2, ... until
the first missing one, at most MAX_SIGNATURES of at most MAX_SIGNATURE_SIZE bytes each. Sigstore
signatures: the registry's tag sha256-<hex>.sig in the same repository, an OCI manifest with one
layer per signature (the payload) and the signature in its dev.cosignproject.cosign/signature
annotation.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import NotFound, SdrunError
from sdrun.image.reference import RegistryReference
from sdrun.image.registry import Registry
from sdrun.image.trustpolicy import docker_namespaces, named_of

DEFAULT_REGISTRIES_D = Path("/etc/containers/registries.d")
DEFAULT_LOOKASIDE = "file:///var/lib/containers/sigstore"
MAX_SIGNATURES = 128
MAX_SIGNATURE_SIZE = 4 << 20
TIMEOUT = 30.0
COSIGN_PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE = "dev.cosignproject.cosign/signature"


class LookasideError(SdrunError):
    """registries.d cannot be read, or a signature cannot be fetched."""


class Namespace(NamedTuple):
    lookaside: str | None = None
    attachments: bool | None = None


class RegistriesD(NamedTuple):
    directory: Path
    default: Namespace | None
    docker: dict[str, Namespace]

    def _chain(self, reference: RegistryReference) -> list[Namespace]:
        named = named_of(reference)
        scopes = [str(named), *docker_namespaces(named.name)]
        chain = [self.docker[scope] for scope in scopes if scope in self.docker]
        return chain + ([self.default] if self.default else [])

    def lookaside(self, reference: RegistryReference) -> str:
        for namespace in self._chain(reference):
            if namespace.lookaside:
                return namespace.lookaside
        return DEFAULT_LOOKASIDE

    def use_attachments(self, reference: RegistryReference) -> bool:
        for namespace in self._chain(reference):
            if namespace.attachments is not None:
                return namespace.attachments
        return False


def load_registries_d(directory: Path | None) -> RegistriesD:
    chosen = directory or DEFAULT_REGISTRIES_D
    import yaml  # only a pull that needs signatures reads registries.d

    merged = RegistriesD(chosen, None, {})
    try:
        names = sorted(path.name for path in chosen.iterdir() if path.name.endswith(".yaml"))
    except FileNotFoundError:
        return merged
    except OSError as error:
        raise LookasideError(f"cannot read {chosen}: {error.strerror}") from None
    default, docker, origin = None, {}, {}
    for name in names:
        path = chosen / name
        try:
            document = yaml.safe_load(path.read_bytes()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise LookasideError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
        if not isinstance(document, dict):
            raise LookasideError(f"{path}: expected a mapping")
        if document.get("default-docker") is not None:
            if default is not None:
                raise LookasideError(f"default-docker is defined both in {origin['']} and {path}")
            default, origin[""] = _namespace(document["default-docker"], path), str(path)
        for scope, settings in (document.get("docker") or {}).items():
            if scope in docker:
                raise LookasideError(f"docker scope {scope} is defined both in {origin[scope]} and {path}")
            docker[str(scope)], origin[scope] = _namespace(settings, path), str(path)
    return merged._replace(default=default, docker=docker)


def _namespace(settings: object, path: Path) -> Namespace:
    if settings is None:
        return Namespace()
    if not isinstance(settings, dict):
        raise LookasideError(f"{path}: a scope's settings must be a mapping")
    lookaside = settings.get("lookaside") or settings.get("sigstore")  # sigstore: the old name
    attachments = settings.get("use-sigstore-attachments")
    if lookaside is not None and not isinstance(lookaside, str):
        raise LookasideError(f"{path}: lookaside must be a URL")
    if attachments is not None and not isinstance(attachments, bool):
        raise LookasideError(f"{path}: use-sigstore-attachments must be true or false")
    return Namespace(lookaside, attachments)


class SimpleSignature(NamedTuple):
    url: str
    blob: bytes


class SigstoreSignature(NamedTuple):
    where: str
    payload: bytes
    signature: str  # base64, as the annotation carries it


def signature_url(base: str, reference: RegistryReference, digest: str, number: int) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"{base.rstrip('/')}/{reference.repository}@{algorithm}={hex_digest}/signature-{number}"


def simple_signatures(base: str, reference: RegistryReference, digest: str) -> list[SimpleSignature]:
    """The lookaside's signatures of digest, in order, until the first one missing."""
    found: list[SimpleSignature] = []
    for number in range(1, MAX_SIGNATURES + 2):
        url = signature_url(base, reference, digest, number)
        if number > MAX_SIGNATURES:
            raise LookasideError(f"{url}: more than {MAX_SIGNATURES} signatures, which sdrun takes for an error")
        blob = _fetch(url)
        if blob is None:
            return found
        found.append(SimpleSignature(url, blob))
    return found


def _fetch(url: str) -> bytes | None:
    """The bytes at a file: or http(s): URL, None if there is nothing there."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_SIGNATURE_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise LookasideError(f"cannot read {path}: {error.strerror}") from None
    elif parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                data = response.read(MAX_SIGNATURE_SIZE + 1)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 404:
                return None
            raise LookasideError(f"{url} answered {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise LookasideError(f"cannot fetch {url}: {getattr(error, 'reason', error)}") from None
    else:
        raise LookasideError(f"lookaside {url}: sdrun reads file:, http: and https: URLs only")
    if len(data) > MAX_SIGNATURE_SIZE:
        raise LookasideError(f"{url} is larger than {MAX_SIGNATURE_SIZE >> 20} MiB: not a signature")
    return data


def sigstore_signatures(registry: Registry, digest: str) -> list[SigstoreSignature]:
    """The signatures attached to digest as the tag sha256-<hex>.sig; none if there is no such tag."""
    tag = digest.replace(":", "-") + ".sig"
    where = f"{registry.reference.host}/{registry.reference.repository}:{tag}"
    try:
        raw, _ = registry.manifest(tag)
    except NotFound:
        return []
    try:
        manifest: Any = json.loads(raw)
        layers = manifest["layers"]
        if not isinstance(layers, list):
            raise TypeError("layers is not a list")
    except (ValueError, TypeError, KeyError) as error:
        raise LookasideError(f"{where} is not a signature manifest: {error}") from None
    if len(layers) > MAX_SIGNATURES:
        raise LookasideError(f"{where} holds more than {MAX_SIGNATURES} signatures")
    found = []
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("mediaType") != COSIGN_PAYLOAD:
            continue  # not a cosign simple signing payload: nothing sdrun could check
        signature = (layer.get("annotations") or {}).get(COSIGN_SIGNATURE)
        size, layer_digest = layer.get("size"), layer.get("digest")
        if not isinstance(signature, str) or not isinstance(size, int) or not isinstance(layer_digest, str):
            found.append(SigstoreSignature(where, b"", ""))  # refused when checked: counts as a bad signature
            continue
        if not 0 <= size <= MAX_SIGNATURE_SIZE:
            raise LookasideError(f"{where}: a payload of {size} bytes is not a signature")
        stream, _ = registry.open_blob(layer_digest, 0)
        with stream:
            payload = stream.read(MAX_SIGNATURE_SIZE + 1)
        if f"sha256:{hashlib.sha256(payload).hexdigest()}" != layer_digest:
            raise LookasideError(f"{where}: payload {layer_digest} does not match its digest")
        found.append(SigstoreSignature(where, payload, signature))
    return found
