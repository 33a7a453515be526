"""The signed payload of an image signature, parsed as strictly as containers/image parses it.

    {"critical": {"type": "atomic container signature",             (cosign: "cosign container image signature")
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "identity": {"docker-reference": "host/repo:tag"}},
     "optional": {"creator": "...", "timestamp": 1700000000, ...}}

Exactly these members in "critical" and at the top: an unknown or duplicated one refuses the
signature, since a verifier that ignored a member it does not know could be made to accept what
the signer restricted. Only bytes whose signature was verified are ever parsed here.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from sdrun.errors import SdrunError

SIMPLE_SIGNING_TYPE = "atomic container signature"
COSIGN_TYPE = "cosign container image signature"
# What go-digest's Parse accepts: an algorithm it knows and hex of that algorithm's length.
DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
HEX = re.compile(r"[0-9a-f]+")


class PayloadError(SdrunError):
    """A verified signature whose payload is not one sdrun accepts."""


class Payload(NamedTuple):
    manifest_digest: str
    docker_reference: str


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise PayloadError(f"duplicate member '{key}'")
        found[key] = value
    return found


def _exact(value: object, members: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where} is not an object")
    if set(value) != set(members):
        raise PayloadError(f"{where} has members {sorted(value)}, not exactly {list(members)}")
    return value


def parse_payload(raw: bytes, signature_type: str) -> Payload:
    try:
        document = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as error:
        raise PayloadError(f"payload is not JSON: {error}") from None
    top = _exact(document, ("critical", "optional"), "the payload")
    optional = top["optional"]
    if not (isinstance(optional, dict) or (optional is None and signature_type == COSIGN_TYPE)):
        raise PayloadError("'optional' is not an object")  # cosign writes null when it has nothing to say
    if optional:
        timestamp = optional.get("timestamp")
        if "timestamp" in optional and (
            isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or timestamp != int(timestamp)
        ):
            raise PayloadError("optional.timestamp is not an integer")
        if "creator" in optional and not isinstance(optional["creator"], str):
            raise PayloadError("optional.creator is not a string")
    critical = _exact(top["critical"], ("type", "image", "identity"), "'critical'")
    if critical["type"] != signature_type:
        raise PayloadError(f"signature type {critical['type']!r}, not {signature_type!r}")
    digest = _exact(critical["image"], ("docker-manifest-digest",), "critical.image")["docker-manifest-digest"]
    algorithm, _, hex_digest = digest.partition(":") if isinstance(digest, str) else ("", "", "")
    if DIGEST_LENGTHS.get(algorithm) != len(hex_digest) or not HEX.fullmatch(hex_digest):
        raise PayloadError(f"invalid docker-manifest-digest {digest!r}")
    reference = _exact(critical["identity"], ("docker-reference",), "critical.identity")["docker-reference"]
    if not isinstance(reference, str):
        raise PayloadError("critical.identity.docker-reference is not a string")
    return Payload(digest, reference)
