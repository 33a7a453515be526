"""containers-policy.json(5): which images the operator trusts, from the file podman and skopeo read.

    {"default": [REQUIREMENT, ...],
     "transports": {"docker": {SCOPE: [REQUIREMENT, ...], ...}, "oci": {...}, ...}}

The file is parsed as strictly as containers/image parses it: an unknown, duplicated or mistyped
member refuses the whole file (and so every pull), since a requirement read wrongly would admit
what the operator meant to keep out. The requirements of the most specific scope that matches
the image all have to hold (sdrun.image.transfer asks before any layer is fetched):

insecureAcceptAnything   anything
reject                   nothing
signedBy                 a GPG simple signing signature (sdrun.image.gpg) by a key of keyPath, keyPaths or keyData
sigstoreSigned           a cosign signature (sdrun.image.cosign) by the key of keyPath, keyPaths, keyData or keyDatas

with signedIdentity saying which docker-reference a signature may name. What sdrun cannot check
(keyless Fulcio and Rekor, PKI, signedBaseLayer, X.509 key types) parses, and refuses every image
it applies to, with a line that says so.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.image.reference import REPO_PATTERN, BadReference, RegistryReference, parse_registry_reference

DEFAULT_POLICY = Path("/etc/containers/policy.json")
ACCEPT = "insecureAcceptAnything"
REJECT = "reject"
SIGNED_BY = "signedBy"
SIGSTORE_SIGNED = "sigstoreSigned"
GPG_KEYS = "GPGKeys"
KEY_TYPES = (GPG_KEYS, "signedByGPGKeys", "X509Certificates", "signedByX509CAs")
MATCH_REPO_DIGEST_OR_EXACT = "matchRepoDigestOrExact"
IDENTITY_FIELDS = {
    "matchExact": (),
    MATCH_REPO_DIGEST_OR_EXACT: (),
    "matchRepository": (),
    "exactReference": ("dockerReference",),
    "exactRepository": ("dockerRepository",),
    "remapIdentity": ("prefix", "signedPrefix"),
}
# Members of sigstoreSigned that name keyless or certificate verification, which sdrun does not do.
SIGSTORE_UNSUPPORTED = (
    "fulcio",
    "rekorPublicKeyPath",
    "rekorPublicKeyPaths",
    "rekorPublicKeyData",
    "rekorPublicKeyDatas",
    "pki",
)
SIGSTORE_KEYS = ("keyPath", "keyPaths", "keyData", "keyDatas")
DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])"
)
DOMAIN_PATTERN = re.compile(rf"{DOMAIN}(?::[0-9]+)?")


class TrustPolicyError(SdrunError):
    """The signature policy cannot be read, or refuses an image."""


class Named(NamedTuple):
    """A docker reference as containers/image's reference package normalizes it."""

    name: str  # HOST/REPO, fully expanded (docker.io/library/busybox)
    tag: str | None
    digest: str | None

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_named(text: str) -> Named:
    """ParseNormalizedNamed: docker's short names expanded, no default tag added."""
    reference = parse_registry_reference(text)
    remainder = text.partition("@")[0]
    tagged = ":" in remainder.rsplit("/", 1)[-1]
    return Named(f"{reference.host}/{reference.repository}", reference.tag if tagged else None, reference.digest)


def named_of(reference: RegistryReference) -> Named:
    return Named(f"{reference.host}/{reference.repository}", reference.tag, reference.digest)


class Identity(NamedTuple):
    """A signedIdentity: which docker-reference of a signature is good for the image pulled."""

    kind: str = MATCH_REPO_DIGEST_OR_EXACT
    values: tuple[str, ...] = ()  # exactReference's, exactRepository's, remapIdentity's prefix and signedPrefix

    def matches(self, intended: Named, signed_text: str) -> bool:
        try:
            signed = parse_named(signed_text)
        except BadReference:
            return False
        if self.kind == "matchExact":
            return not intended.name_only and not signed.name_only and str(signed) == str(intended)
        if self.kind == MATCH_REPO_DIGEST_OR_EXACT:
            return _repo_digest_or_exact(intended, signed)
        if self.kind == "matchRepository":
            return signed.name == intended.name
        if self.kind == "exactReference":
            wanted = parse_named(self.values[0])
            return not signed.name_only and str(signed) == str(wanted)
        if self.kind == "exactRepository":
            return signed.name == parse_named(self.values[0]).name
        remapped = _remap(intended, *self.values)
        return remapped is not None and _repo_digest_or_exact(remapped, signed)

    def describe(self) -> str:
        return self.kind + (f" {' -> '.join(self.values)}" if self.values else "")


def _repo_digest_or_exact(intended: Named, signed: Named) -> bool:
    """By tag: the signature names exactly that tag. By digest: any reference of the same repository
    (the digest itself is checked against the signature's docker-manifest-digest)."""
    if signed.name_only:
        return False
    if intended.tag is not None:
        return str(signed) == str(intended)
    return intended.digest is not None and signed.name == intended.name


def _remap(intended: Named, prefix: str, signed_prefix: str) -> Named | None:
    """remapIdentity: the intended reference with prefix replaced by signedPrefix, if its name starts
    with prefix at a '/' boundary (the result must be a canonical reference, as ParseNamed wants)."""
    name = intended.name
    if not (name == prefix or (name.startswith(prefix) and name[len(prefix)] == "/")):
        return intended
    rewritten = str(intended).replace(prefix, signed_prefix, 1)
    try:
        remapped = parse_named(rewritten)
    except BadReference:
        return None
    return remapped if str(remapped) == rewritten else None


class Requirement(NamedTuple):
    kind: str  # ACCEPT, REJECT, SIGNED_BY, SIGSTORE_SIGNED, or another containers/image knows
    key_paths: tuple[str, ...] = ()
    key_data: tuple[bytes, ...] = ()
    identity: Identity = Identity()
    unsupported: str | None = None  # why sdrun cannot check this requirement: it refuses every image then

    def keys(self) -> list[bytes]:
        """The key material: each key file's bytes, then the inline keys."""
        found = []
        for path in self.key_paths:
            try:
                found.append(Path(path).read_bytes())
            except OSError as error:
                raise TrustPolicyError(f"cannot read key {path}: {error.strerror}") from None
        return found + list(self.key_data)

    def describe(self) -> str:
        if self.kind not in (SIGNED_BY, SIGSTORE_SIGNED):
            return self.kind
        keys = [*self.key_paths, *(["keyData"] if self.key_data else [])]
        identity = "" if self.identity == Identity() else f", {self.identity.describe()}"
        return f"{self.kind} ({', '.join(keys)}{identity})"


class Scope(NamedTuple):
    where: str  # for messages: 'docker "127.0.0.1:5000/app"', or 'default'
    requirements: tuple[Requirement, ...]


class TrustPolicy(NamedTuple):
    path: Path
    default: tuple[Requirement, ...]
    transports: dict[str, dict[str, tuple[Requirement, ...]]]

    def scope(self, transport: str, identity: str, namespaces: list[str]) -> Scope:
        """The requirements of the most specific scope: the identity, its namespaces in order, the
        transport's "", then the default."""
        scopes = self.transports.get(transport)
        if scopes is not None:
            for name in (identity, *namespaces, ""):
                if name in scopes:
                    return Scope(f'{transport} "{name}"', scopes[name])
        return Scope("default", self.default)

    def docker_scope(self, reference: RegistryReference) -> Scope:
        return self.scope("docker", str(named_of(reference)), docker_namespaces(named_of(reference).name))


def docker_namespaces(name: str) -> list[str]:
    """HOST/A/B, HOST/A, HOST, then *.DOMAIN wildcards of the host without its port."""
    namespaces = []
    while True:
        namespaces.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    host = name.split(":", 1)[0] if not name.startswith("[") else name
    while "." in host:
        host = host.split(".", 1)[1]
        namespaces.append(f"*.{host}")
    return namespaces


def path_namespaces(path: str) -> list[str]:
    """The oci and oci-archive transports: the path, then each parent directory but '/'."""
    namespaces = []
    while "/" in path and path != "/":
        namespaces.append(path)
        path = path.rsplit("/", 1)[0]
    return namespaces


# --- reading the file ---


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate member '{key}'")
        found[key] = value
    return found


def load_trust_policy(path: Path | None) -> TrustPolicy | None:
    """The policy at path (which must exist), else /etc/containers/policy.json, else None: nothing required."""
    chosen = path or DEFAULT_POLICY
    try:
        raw = chosen.read_bytes()
    except FileNotFoundError:
        if path is not None:
            raise TrustPolicyError(f"signature policy {path} does not exist") from None
        return None
    except OSError as error:
        raise TrustPolicyError(f"cannot read signature policy {chosen}: {error.strerror}") from None
    try:
        return parse_trust_policy(raw, chosen)
    except (ValueError, TypeError, KeyError) as error:
        raise TrustPolicyError(f"invalid signature policy {chosen}: {error}") from None


def parse_trust_policy(raw: bytes, path: Path) -> TrustPolicy:
    document = json.loads(raw, object_pairs_hook=_no_duplicates)
    top = _object(document, "the policy", required=("default",), optional=("transports",))
    transports: dict[str, dict[str, tuple[Requirement, ...]]] = {}
    for transport, scopes in _object(top.get("transports", {}), "transports").items():
        transports[transport] = {}
        for scope, requirements in _object(scopes, f"transports.{transport}").items():
            _check_scope(transport, scope)
            transports[transport][scope] = _requirements(requirements, f'transports.{transport}."{scope}"')
    return TrustPolicy(path, _requirements(top["default"], "default"), transports)


def _object(
    value: object, where: str, *, required: tuple[str, ...] = (), optional: tuple[str, ...] | None = None
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{where} lacks '{missing[0]}'")
    if optional is not None:
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            raise ValueError(f"{where} has an unknown member '{unknown[0]}'")
    return value


def _check_scope(transport: str, scope: str) -> None:
    if scope == "":
        return
    if transport == "docker-archive":
        raise ValueError('docker-archive takes no scope but ""')
    if transport in ("oci", "oci-archive") and (
        not scope.startswith("/") or scope == "/" or scope.endswith("/") or "//" in scope or "/./" in scope
    ):
        raise ValueError(f"{transport} scope '{scope}' must be an absolute, clean path")


def _requirements(value: object, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of requirements")
    if not value:
        raise ValueError(f"{where}: the list of requirements must not be empty")
    return tuple(_requirement(item, f"{where}[{number}]") for number, item in enumerate(value))


def _requirement(value: object, where: str) -> Requirement:
    kind = _object(value, where, required=("type",)).get("type")
    assert isinstance(value, dict)
    if kind in (ACCEPT, REJECT):
        _object(value, where, required=("type",), optional=())
        return Requirement(kind)
    if kind == SIGNED_BY:
        return _signed_by(value, where)
    if kind == SIGSTORE_SIGNED:
        return _sigstore_signed(value, where)
    if kind == "signedBaseLayer":
        _object(value, where, required=("type", "baseLayerIdentity"), optional=())
        return Requirement(kind, unsupported="signedBaseLayer is not implemented (by containers/image either)")
    raise ValueError(f"{where}: unknown requirement type {kind!r}")


def _signed_by(value: dict[str, Any], where: str) -> Requirement:
    _object(value, where, required=("type", "keyType"), optional=("keyPath", "keyPaths", "keyData", "signedIdentity"))
    key_type = value["keyType"]
    if key_type not in KEY_TYPES:
        raise ValueError(f"{where}: unrecognized keyType {key_type!r}")
    paths, data = _key_sources(value, where, ("keyPath", "keyPaths", "keyData"))
    unsupported = None if key_type == GPG_KEYS else f"keyType {key_type} is not implemented"
    return Requirement(SIGNED_BY, paths, data, _identity(value.get("signedIdentity"), where), unsupported)


def _sigstore_signed(value: dict[str, Any], where: str) -> Requirement:
    _object(value, where, required=("type",), optional=(*SIGSTORE_KEYS, *SIGSTORE_UNSUPPORTED, "signedIdentity"))
    keyless = [key for key in SIGSTORE_UNSUPPORTED if key in value]
    if keyless:
        unsupported = f"{'/'.join(keyless)}: sdrun verifies sigstore signatures by public key only, not keyless"
        return Requirement(
            SIGSTORE_SIGNED, identity=_identity(value.get("signedIdentity"), where), unsupported=unsupported
        )
    paths, data = _key_sources(value, where, SIGSTORE_KEYS)
    return Requirement(SIGSTORE_SIGNED, paths, data, _identity(value.get("signedIdentity"), where))


def _key_sources(
    value: dict[str, Any], where: str, members: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    given = [member for member in members if member in value]
    if len(given) != 1:
        raise ValueError(f"{where}: exactly one of {', '.join(members)} must be given")
    member, item = given[0], value[given[0]]
    if member == "keyPath":
        if not isinstance(item, str) or not item:
            raise ValueError(f"{where}: keyPath must be a path")
        return (item,), ()
    items = item if member in ("keyPaths", "keyDatas") else [item]
    if not isinstance(items, list) or not items or not all(isinstance(entry, str) and entry for entry in items):
        raise ValueError(
            f"{where}: {member} must be {'a non-empty list of strings' if member.endswith('s') else 'a string'}"
        )
    if member == "keyPaths":
        return tuple(items), ()
    try:
        return (), tuple(base64.b64decode(entry, validate=True) for entry in items)
    except binascii.Error:
        raise ValueError(f"{where}: {member} must be base64") from None


def _identity(value: object, where: str) -> Identity:
    if value is None:
        return Identity()
    kind = _object(value, f"{where}.signedIdentity", required=("type",)).get("type")
    if kind not in IDENTITY_FIELDS:
        raise ValueError(f"{where}: unknown signedIdentity type {kind!r}")
    fields = IDENTITY_FIELDS[kind]
    members = _object(value, f"{where}.signedIdentity", required=("type", *fields), optional=())
    values = tuple(members[field] for field in fields)
    if not all(isinstance(item, str) for item in values):
        raise ValueError(f"{where}: the members of {kind} must be strings")
    checks: dict[str, Callable[[str], bool]] = {
        "dockerReference": lambda text: not parse_named(text).name_only,
        "dockerRepository": lambda text: bool(parse_named(text)),
        "prefix": _valid_prefix,
        "signedPrefix": _valid_prefix,
    }
    for field, item in zip(fields, values, strict=True):
        try:
            valid = checks[field](item)
        except BadReference:
            valid = False
        if not valid:
            raise ValueError(f"{where}: invalid {field} {item!r}")
    return Identity(kind, values)


def _valid_prefix(text: str) -> bool:
    """remapIdentity's prefixes: a host[:port], or host[:port]/repository-path."""
    host, slash, path = text.partition("/")
    return bool(DOMAIN_PATTERN.fullmatch(host)) and (not slash or bool(REPO_PATTERN.fullmatch(path)))
