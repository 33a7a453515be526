"""Does the signature policy admit an image from a registry? Asked in two steps by a pull
(sdrun.image.transfer): before the registry is asked anything (a scope that rejects, or that
needs what sdrun cannot check, refuses at once), then with the digest of the manifest the pull
chose, before any config or layer blob is fetched.

Each signature is checked in this order: the cryptography (gpgv, or the cosign key), then the
payload parsed strictly, then its manifest digest against the chosen manifest's, then its
docker-reference against the signedIdentity rule. One signature that passes all four satisfies a
requirement; every requirement of the scope has to be satisfied.
"""

from __future__ import annotations

from pathlib import Path

from sdrun.errors import SdrunError
from sdrun.image.lookaside import (
    RegistriesD,
    load_registries_d,
    signature_url,
    sigstore_signatures,
    simple_signatures,
)
from sdrun.image.payload import COSIGN_TYPE, SIMPLE_SIGNING_TYPE, PayloadError, parse_payload
from sdrun.image.reference import RegistryReference
from sdrun.image.registry import Registry
from sdrun.image.trustpolicy import (
    REJECT,
    SIGNED_BY,
    SIGSTORE_SIGNED,
    Requirement,
    Scope,
    TrustPolicy,
    TrustPolicyError,
    named_of,
)


class ImageTrust:
    """The policy's verdict on one registry image."""

    def __init__(
        self, policy: TrustPolicy, registries_d: Path | None, reference: RegistryReference, registry: Registry
    ) -> None:
        self.policy = policy
        self.registries_d_path = registries_d
        self.reference = reference
        self.registry = registry
        self.scope: Scope = policy.docker_scope(reference)
        self._registries_d: RegistriesD | None = None

    def refuse(self, requirement: Requirement, what: str) -> TrustPolicyError:
        return TrustPolicyError(
            f"{self.policy.path}: {self.reference.name} refused by {requirement.describe()} "
            f"(scope {self.scope.where}): {what}"
        )

    def check_scope(self) -> None:
        """Before the registry is asked anything: what refuses without looking at the image."""
        for requirement in self.scope.requirements:
            if requirement.kind == REJECT:
                raise self.refuse(requirement, "the policy rejects every image of this scope")
            if requirement.unsupported:
                raise self.refuse(requirement, f"sdrun cannot check this requirement: {requirement.unsupported}")

    def check_manifest(self, digest: str) -> None:
        """With the digest of the manifest the pull chose: each requirement met by a signature of it."""
        for requirement in self.scope.requirements:
            if requirement.kind == SIGNED_BY:
                self._check_simple(requirement, digest)
            elif requirement.kind == SIGSTORE_SIGNED:
                self._check_sigstore(requirement, digest)

    @property
    def registries_d(self) -> RegistriesD:
        if self._registries_d is None:
            self._registries_d = load_registries_d(self.registries_d_path)
        return self._registries_d

    def _check_simple(self, requirement: Requirement, digest: str) -> None:
        from sdrun.image import gpg

        base = self.registries_d.lookaside(self.reference)
        found = simple_signatures(base, self.reference, digest)
        if not found:
            raise self.refuse(requirement, f"no signature at {signature_url(base, self.reference, digest, 1)}")
        keys = requirement.keys()
        reasons = []
        for signature in found:
            try:
                verified = gpg.verify(keys, signature.blob)
            except gpg.SignatureRefused as error:
                reasons.append(f"{signature.url}: {error.message}")
                continue
            reason = self._check_payload(requirement, verified.payload, SIMPLE_SIGNING_TYPE, digest)
            if reason is None:
                return
            reasons.append(f"{signature.url}: {reason}")
        raise self.refuse(requirement, "; ".join(reasons))

    def _check_sigstore(self, requirement: Requirement, digest: str) -> None:
        tag = f"{self.reference.host}/{self.reference.repository}:{digest.replace(':', '-')}.sig"
        if not self.registries_d.use_attachments(self.reference):
            raise self.refuse(
                requirement,
                f"sigstore signatures are read only where use-sigstore-attachments is true, "
                f"which {self.registries_d.directory} does not say for {self.reference.host}",
            )
        found = sigstore_signatures(self.registry, digest)
        if not found:
            raise self.refuse(requirement, f"no signature: the registry has no {tag}")
        from sdrun.image import cosign

        keys = cosign.public_keys(requirement.keys())
        reasons = []
        for number, signature in enumerate(found, 1):
            try:
                cosign.verify(keys, signature.payload, signature.signature)
            except cosign.CosignRefused as error:
                reasons.append(f"{tag} #{number}: {error.message}")
                continue
            reason = self._check_payload(requirement, signature.payload, COSIGN_TYPE, digest)
            if reason is None:
                return
            reasons.append(f"{tag} #{number}: {reason}")
        raise self.refuse(requirement, "; ".join(reasons))

    def _check_payload(self, requirement: Requirement, raw: bytes, signature_type: str, digest: str) -> str | None:
        """What is wrong with a verified payload for this image, or None."""
        try:
            payload = parse_payload(raw, signature_type)
        except PayloadError as error:
            return f"invalid signed payload: {error.message}"
        if payload.manifest_digest != digest:
            return f"it signs manifest {payload.manifest_digest}, not {digest} (what the registry sent)"
        if not requirement.identity.matches(named_of(self.reference), payload.docker_reference):
            return (
                f"it signs the identity {payload.docker_reference}, which "
                f"{requirement.identity.describe()} does not accept for {self.reference.name}"
            )
        return None


def check_file_source(policy: TrustPolicy, transport: str, identity: str, namespaces: list[str], name: str) -> None:
    """`image import` of an OCI layout or archive: these carry no signatures sdrun reads, so only a
    scope whose requirements are all insecureAcceptAnything admits them."""
    scope = policy.scope(transport, identity, namespaces)
    for requirement in scope.requirements:
        if requirement.kind == "insecureAcceptAnything":
            continue
        what = (
            "the policy rejects every image of this scope"
            if requirement.kind == REJECT
            else "a signature is required, but sdrun reads none from this transport"
        )
        raise SdrunError(f"{policy.path}: {name} refused by {requirement.describe()} (scope {scope.where}): {what}")
