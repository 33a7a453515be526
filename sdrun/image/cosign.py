"""Cosign key signatures: a DER signature (base64) over the payload's bytes, by an ECDSA (SHA-256),
RSA (PKCS#1 v1.5, SHA-256) or Ed25519 public key in PEM. The one module that imports `cryptography`."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from sdrun.errors import SdrunError

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class CosignRefused(SdrunError):
    """A sigstore signature that does not verify against the trusted keys."""


def public_keys(pems: list[bytes]) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for pem in pems:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as error:
            raise CosignRefused(f"the policy's sigstore key is not a PEM public key: {error}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise CosignRefused(f"the policy's sigstore key is a {type(key).__name__}, which cosign does not use")
        keys.append(key)
    if not keys:
        raise CosignRefused("the policy names no sigstore key")
    return keys


def _verify_one(key: PublicKey, signature: bytes, payload: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        key.verify(signature, payload)


def verify(keys: list[PublicKey], payload: bytes, signature_base64: str) -> None:
    """Returns if one of keys signed payload; else CosignRefused."""
    try:
        signature = base64.b64decode(signature_base64, validate=True)
    except binascii.Error:
        raise CosignRefused("the signature annotation is not base64") from None
    if not signature:
        raise CosignRefused("the layer carries no signature annotation")
    for key in keys:
        try:
            _verify_one(key, signature, payload)
            return
        except InvalidSignature:
            continue
    raise CosignRefused("not signed by a key the policy trusts")


def key_fingerprint(pem: bytes) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, hex: what `image trust add` shows for a cosign key."""
    (key,) = public_keys([pem])
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()
