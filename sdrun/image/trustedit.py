"""`sdrun image trust`: the signature policy (containers-policy.json) shown, and edited as an operator
would edit it by hand, so that podman and skopeo read the same file.

Every edit reads the file as JSON, changes one scope, checks that the result parses as a policy
(sdrun.image.trustpolicy), and replaces the file atomically. `add` copies the key into
<root>/trustedkeys/ (named by its fingerprint) and names it by path there; a second key for the
same scope joins the first in keyPaths (key rotation: either key's signature is enough), never a
second requirement (which would demand both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import SdrunError
from sdrun.files import write_atomically
from sdrun.image.trustpolicy import (
    ACCEPT,
    DEFAULT_POLICY,
    GPG_KEYS,
    REJECT,
    SIGNED_BY,
    SIGSTORE_SIGNED,
    TrustPolicy,
    parse_trust_policy,
)
from sdrun.paths import Paths

GPG = "gpg"
SIGSTORE = "sigstore"
NEW_POLICY: dict[str, Any] = {"default": [{"type": ACCEPT}]}  # what there is without a file: anything goes


class KeyToTrust(NamedTuple):
    kind: str  # GPG or SIGSTORE
    fingerprints: tuple[str, ...]  # GPG: each primary key's; sigstore: SHA-256 of the public key
    data: bytes


def read_key(path: Path, kind: str) -> KeyToTrust:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SdrunError(f"cannot read key {path}: {error.strerror}") from None
    if kind == GPG:
        from sdrun.image.gpg import key_fingerprints

        fingerprints = tuple(key_fingerprints([data]))
        if not fingerprints:
            raise SdrunError(f"{path} holds no GPG public key", hint="gpg --armor --export FINGERPRINT > KEY")
    else:
        from sdrun.image.cosign import CosignRefused, key_fingerprint

        try:
            fingerprints = (key_fingerprint(data),)
        except CosignRefused as error:
            raise SdrunError(f"{path}: {error.message}") from None
    return KeyToTrust(kind, fingerprints, data)


def install_key(paths: Paths, key: KeyToTrust) -> Path:
    """The key copied into <root>/trustedkeys, named by its (first) fingerprint."""
    directory = paths.trusted_keys
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # podman and skopeo, run by anyone, read the policy's keys
    name = f"{key.fingerprints[0]}.gpg" if key.kind == GPG else f"sigstore-{key.fingerprints[0][:40]}.pub"
    target = directory / name
    write_atomically(target, key.data, 0o644)
    target.chmod(0o644)  # whatever the umask: podman and skopeo, run by anyone, read it
    return target


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"default": [dict(item) for item in NEW_POLICY["default"]]}
    except OSError as error:
        raise SdrunError(f"cannot read {path}: {error.strerror}") from None
    try:
        parse_trust_policy(raw, path)
        document: dict[str, Any] = json.loads(raw)
    except (ValueError, TypeError, KeyError) as error:
        raise SdrunError(f"invalid signature policy {path}: {error}", hint="fix it by hand first") from None
    return document


def _save(path: Path, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=4) + "\n"
    parse_trust_policy(text.encode(), path)  # what is written must read back as a policy
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text, 0o644)
    path.chmod(0o644)


def _scope_list(document: dict[str, Any], transport: str, scope: str) -> list[dict[str, Any]] | None:
    if scope == "default":
        return list(document["default"])
    found = document.get("transports", {}).get(transport, {}).get(scope)
    return list(found) if found is not None else None


def _set_scope(document: dict[str, Any], transport: str, scope: str, requirements: list[dict[str, Any]]) -> None:
    if scope == "default":
        document["default"] = requirements
    else:
        document.setdefault("transports", {}).setdefault(transport, {})[scope] = requirements


def add_key(policy_path: Path | None, transport: str, scope: str, key_path: Path, kind: str) -> str:
    """Trust the key at key_path (already in <root>/trustedkeys) for scope; returns what was done."""
    path = policy_path or DEFAULT_POLICY
    document = _load(path)
    current = [
        item for item in _scope_list(document, transport, scope) or [] if item.get("type") not in (ACCEPT, REJECT)
    ]
    wanted_type = SIGNED_BY if kind == GPG else SIGSTORE_SIGNED
    for requirement in current:
        if requirement.get("type") != wanted_type or not ({"keyPath", "keyPaths"} & set(requirement)):
            continue
        if kind == GPG and requirement.get("keyType") != GPG_KEYS:
            continue
        keys = requirement.pop("keyPaths", None) or [requirement.pop("keyPath")]
        if str(key_path) not in keys:
            keys.append(str(key_path))
        requirement["keyPaths" if len(keys) > 1 else "keyPath"] = keys if len(keys) > 1 else keys[0]
        how = f"added to the keys of {wanted_type} for {scope} (either key's signature is enough)"
        if kind == SIGSTORE and len(keys) > 1:
            how += "; note: podman and skopeo read keyPaths in sigstoreSigned from containers/image 5.33 on"
        break
    else:
        added: dict[str, Any] = {"type": wanted_type}
        if kind == GPG:
            added["keyType"] = GPG_KEYS
        added["keyPath"] = str(key_path)
        if kind == SIGSTORE:
            added["signedIdentity"] = {"type": "matchRepository"}
        current.append(added)
        how = f"{scope} now requires {wanted_type}"
    _set_scope(document, transport, scope, current)
    _save(path, document)
    return f"{path}: {how}"


def set_scope(policy_path: Path | None, transport: str, scope: str, verdict: str) -> str:
    path = policy_path or DEFAULT_POLICY
    document = _load(path)
    _set_scope(document, transport, scope, [{"type": ACCEPT if verdict == "accept" else REJECT}])
    _save(path, document)
    return f"{path}: {scope} now {'accepts anything' if verdict == 'accept' else 'rejects every image'}"


def remove_scope(policy_path: Path | None, transport: str, scope: str) -> str:
    path = policy_path or DEFAULT_POLICY
    document = _load(path)
    scopes = document.get("transports", {}).get(transport, {})
    if scope not in scopes:
        raise SdrunError(f"{path} has no {transport} scope '{scope}'", hint="sdrun image trust show")
    del scopes[scope]
    _save(path, document)
    return f"{path}: {scope} removed; its images fall under a wider scope, or the default"


def describe_policy(policy: TrustPolicy | None, path: Path) -> list[str]:
    """The policy as rows: TRANSPORT  SCOPE  REQUIREMENTS (all of which must hold)."""
    if policy is None:
        return [f"no signature policy at {path}: every image is accepted"]
    rows = [("TRANSPORT", "SCOPE", "REQUIRES"), ("", "default", " + ".join(r.describe() for r in policy.default))]
    for transport, scopes in sorted(policy.transports.items()):
        for scope, requirements in sorted(scopes.items()):
            rows.append((transport, scope or '""', " + ".join(r.describe() for r in requirements)))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return [f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip() for row in rows]


def sigstore_fingerprint_note() -> str:
    return (
        "cosign signs the repository without a tag: signedIdentity matchRepository, "
        "so any tag of the repository that a signature covers is accepted"
    )
