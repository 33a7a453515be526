"""containers-policy.json(5) as sdrun reads it: strict parsing, scope order, every signedIdentity rule,
and the strict payload parse (no systemd needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from sdrun.image.payload import COSIGN_TYPE, SIMPLE_SIGNING_TYPE, PayloadError, parse_payload
from sdrun.image.reference import parse_registry_reference
from sdrun.image.trustpolicy import (
    Identity,
    TrustPolicyError,
    docker_namespaces,
    load_trust_policy,
    named_of,
    parse_trust_policy,
    path_namespaces,
)

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def policy(document: object) -> bytes:
    return json.dumps(document).encode()


def test_docker_scopes_go_from_the_reference_to_wildcard_domains() -> None:
    assert docker_namespaces("registry.example.org:5000/team/app") == [
        "registry.example.org:5000/team/app",
        "registry.example.org:5000/team",
        "registry.example.org:5000",
        "*.example.org",
        "*.org",
    ]
    assert path_namespaces("/srv/images/app") == ["/srv/images/app", "/srv/images", "/srv"]
    scopes = {
        "registry.example.org/team/app:1": [{"type": "reject"}],
        "registry.example.org/team": ACCEPT,
        "*.example.org": REJECT,
    }
    parsed = parse_trust_policy(policy({"default": REJECT, "transports": {"docker": scopes}}), Path("p"))
    for text, where in (
        ("registry.example.org/team/app:1", 'docker "registry.example.org/team/app:1"'),
        ("registry.example.org/team/app:2", 'docker "registry.example.org/team"'),
        ("registry.example.org/other:1", 'docker "*.example.org"'),
        ("quay.io/app:1", "default"),
    ):
        assert parsed.docker_scope(parse_registry_reference(text)).where == where


@pytest.mark.parametrize(
    "document",
    [
        {"transports": {}},  # no default
        {"default": []},  # an empty list of requirements
        {"default": ACCEPT, "extra": 1},
        {"default": [{"type": "insecureAcceptAnything", "keyType": "GPGKeys"}]},
        {"default": [{"type": "signedBy", "keyType": "GPGKeys"}]},  # no key
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyData": "AA=="}]},
        {"default": [{"type": "signedBy", "keyType": "PGP", "keyPath": "/k"}]},
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": "not base64!"}]},
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "signedIdentity": {"type": "x"}}]},
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k",
                      "signedIdentity": {"type": "exactReference", "dockerReference": "busybox"}}]},  # no tag
        {"default": [{"type": "maybe"}]},
        {"default": ACCEPT, "transports": {"docker-archive": {"/x": ACCEPT}}},
        {"default": ACCEPT, "transports": {"oci": {"relative/dir": ACCEPT}}},
    ],
)  # fmt: skip
def test_a_malformed_policy_is_refused_whole(document: object, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(policy(document))
    with pytest.raises(TrustPolicyError, match="invalid signature policy"):
        load_trust_policy(path)


def test_duplicate_members_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}')
    with pytest.raises(TrustPolicyError, match="duplicate member 'default'"):
        load_trust_policy(path)
    with pytest.raises(TrustPolicyError, match="does not exist"):
        load_trust_policy(tmp_path / "absent.json")  # named: must exist; the default path may be absent


def test_keyless_and_unknown_key_types_parse_and_are_marked_unsupported() -> None:
    keyless = {"type": "sigstoreSigned", "fulcio": {"caPath": "/ca"}, "rekorPublicKeyPath": "/rekor"}
    x509 = {"type": "signedBy", "keyType": "X509Certificates", "keyPath": "/k"}
    parsed = parse_trust_policy(policy({"default": [keyless, x509]}), Path("p"))
    assert all(requirement.unsupported for requirement in parsed.default)
    data = parse_trust_policy(
        policy({"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": base64.b64encode(b"key").decode()}]}),
        Path("p"),
    )
    assert data.default[0].keys() == [b"key"]


def match(identity: Identity, intended: str, signed: str) -> bool:
    return identity.matches(named_of(parse_registry_reference(intended)), signed)


def test_signed_identity_rules() -> None:
    default = Identity()
    assert match(default, "example.org/app:1", "example.org/app:1")
    assert not match(default, "example.org/app:1", "example.org/app:2")
    assert not match(default, "example.org/app:1", "example.org/app")  # a signature names a tag or digest
    digest = "sha256:" + "a" * 64
    assert match(default, f"example.org/app@{digest}", "example.org/app:whatever")
    assert not match(default, f"example.org/app@{digest}", "example.org/other:1")
    assert match(default, "busybox:1", "docker.io/library/busybox:1")  # both normalized
    assert match(Identity("matchRepository"), "example.org/app:1", "example.org/app")
    assert not match(Identity("matchExact"), f"example.org/app@{digest}", "example.org/app:1")
    assert match(Identity("exactReference", ("example.org/app:1",)), "mirror.org/x:9", "example.org/app:1")
    assert match(Identity("exactRepository", ("example.org/app",)), "mirror.org/x:9", "example.org/app:3")
    remap = Identity("remapIdentity", ("mirror.org/team", "example.org/team"))
    assert match(remap, "mirror.org/team/app:1", "example.org/team/app:1")
    assert not match(remap, "mirror.org/teams/app:1", "example.org/team/app:1")  # a prefix at a '/' only
    assert match(remap, "other.org/app:1", "other.org/app:1")  # not under the prefix: as it is


def payload(**critical: object) -> bytes:
    body: dict[str, object] = {
        "type": SIMPLE_SIGNING_TYPE,
        "image": {"docker-manifest-digest": "sha256:" + "b" * 64},
        "identity": {"docker-reference": "example.org/app:1"},
    }
    body.update(critical)
    return json.dumps({"critical": body, "optional": {"creator": "t", "timestamp": 1}}).encode()


def test_the_payload_is_parsed_strictly() -> None:
    assert parse_payload(payload(), SIMPLE_SIGNING_TYPE).docker_reference == "example.org/app:1"
    for bad in (
        payload(extra="x"),
        payload(type=COSIGN_TYPE),
        payload(image={"docker-manifest-digest": "sha256:12"}),
        payload(identity={"docker-reference": "x", "more": 1}),
        b'{"critical": {}, "critical": {}, "optional": {}}',
        json.dumps({"critical": json.loads(payload())["critical"], "optional": {"timestamp": 1.5}}).encode(),
        b"not json",
    ):
        with pytest.raises(PayloadError):
            parse_payload(bad, SIMPLE_SIGNING_TYPE)
    cosign = json.loads(payload(type=COSIGN_TYPE))
    cosign["optional"] = None  # what cosign writes when it has no annotations
    assert parse_payload(json.dumps(cosign).encode(), COSIGN_TYPE).manifest_digest == "sha256:" + "b" * 64
