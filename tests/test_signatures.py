"""Signature trust against real peers: Debian's docker-registry and a lookaside HTTP server on 127.0.0.1,
images signed by `skopeo copy --sign-by` with GPG keys made here (a temporary GNUPGHOME), and skopeo's own
verdict under the same policy and registries.d for every GPG case. Sigstore signatures are written here in
cosign's format (Debian's skopeo has sigstore disabled)."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import PROJECT, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for
from tests.test_image_support import LocalRegistry, local_registry, multi_platform, umoci_change, umoci_image

WORK = PROJECT / "build" / "test-signatures"  # the harness wipes /tmp: keep keys and images in the project
SIMPLE = "atomic container signature"


def run(*argv: str, env: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    result = subprocess.run(argv, capture_output=True, input=data, env=env, check=False, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.decode()}")
    return result.stdout


@dataclass
class Keys:
    home: Path
    fingerprints: dict[str, str]  # trusted, untrusted, expired -> primary key fingerprint
    files: dict[str, Path]  # their public keys (trusted's armored, the others binary)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}

    def gpg(self, *args: str, data: bytes | None = None) -> bytes:
        return run("gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args, env=self.env, data=data)


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    shutil.rmtree(WORK, ignore_errors=True)
    home = WORK / "gnupg"
    home.mkdir(parents=True, mode=0o700)
    made = Keys(home, {}, {})
    for name, extra, usage, expiry in (("trusted", (), "sign", "never"), ("untrusted", (), "sign", "never"),
                                       ("expired", ("--faked-system-time", "20200101T000000"), "sign", "1d"),
                                       ("revoked", (), "cert", "never")):  # fmt: skip
        made.gpg(*extra, "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", usage, expiry)
        listing = made.gpg("--with-colons", "--list-keys", f"{name}@example.org").decode()
        made.fingerprints[name] = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        armor = ("--armor",) if name == "trusted" else ()
        made.files[name] = WORK / f"{name}.{'asc' if armor else 'gpg'}"
        made.files[name].write_bytes(made.gpg(*armor, "--export", made.fingerprints[name]))
    try:
        yield made
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=made.env, check=False, capture_output=True)


@contextlib.contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """directory over plain HTTP on 127.0.0.1: a lookaside, as `python3 -m http.server` would serve it."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    directory.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class World:
    registry: LocalRegistry
    keys: Keys
    layout: Path
    lookaside: Path  # the directory the lookaside server serves (skopeo's lookaside-staging)
    registries_d: Path
    policy: Path  # signedBy the trusted key for the registry's host, default reject

    @property
    def host(self) -> str:
        return self.registry.host

    def push(self, tag: str, repo: str, signer: str | None = None, *extra: str) -> str:
        """skopeo copy oci:LAYOUT:TAG docker://HOST/REPO, signed by the named key (skopeo --sign-by)."""
        sign = ["--sign-by", self.keys.fingerprints[signer]] if signer else []
        target = f"{self.host}/{repo}"
        run("skopeo", "--insecure-policy", "--registries.d", str(self.registries_d), "copy", "--quiet",
            "--dest-tls-verify=false", *sign, *extra, f"oci:{self.layout}:{tag}", f"docker://{target}",
            env=self.keys.env)  # fmt: skip
        return target

    def digest(self, reference: str) -> str:
        raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}")
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def signatures(self, repo: str, digest: str) -> Path:
        return self.lookaside / f"{repo}@sha256={digest.removeprefix('sha256:')}"

    def skopeo_accepts(self, reference: str, policy: Path | None = None) -> bool:
        target = WORK / "skopeo-copy"
        shutil.rmtree(target, ignore_errors=True)
        result = subprocess.run(
            ["skopeo", "--policy", str(policy or self.policy), "--registries.d", str(self.registries_d), "copy",
             "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"dir:{target}"],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        return result.returncode == 0


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def signed_by(key: Path, **identity: str) -> dict[str, object]:
    requirement: dict[str, object] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}
    if identity:
        requirement["signedIdentity"] = identity
    return requirement


@pytest.fixture(scope="module")
def world(keys: Keys, rootfs: Path) -> Iterator[World]:
    layout = WORK / "layout"
    umoci_image(layout, "base", rootfs)
    umoci_change(layout, "base", "other", "echo other > other")
    lookaside = WORK / "sigstore"
    with local_registry(WORK / "registry") as registry, file_server(lookaside) as url:
        registries_d = WORK / "registries.d"
        registries_d.mkdir()
        (registries_d / "default.yaml").write_text(
            f"default-docker:\n  lookaside: {url}\n  lookaside-staging: file://{lookaside}\n"
        )
        policy = write_json(
            WORK / "policy.json",
            {"default": [{"type": "reject"}],
             "transports": {"docker": {registry.host: [signed_by(keys.files["trusted"])]}}},
        )  # fmt: skip
        yield World(registry, keys, layout, lookaside, registries_d, policy)


def pull(sdrun: Sdrun, world: World, reference: str, policy: Path | None = None) -> subprocess.CompletedProcess[str]:
    return sdrun("image", "pull", "--signature-policy", str(policy or world.policy),
                 "--registries.d", str(world.registries_d), reference, check=False)  # fmt: skip


def store_files(sdrun: Sdrun) -> list[Path]:
    images = sdrun.root / "images"
    return sorted(path for path in images.rglob("*") if path.is_file()) if images.exists() else []


def refused(sdrun: Sdrun, world: World, reference: str, policy: Path | None = None) -> str:
    """A pull the policy refuses: one line, exit 125, the store exactly as it was; and
    skopeo, under the same policy and registries.d, refuses it too."""
    before = store_files(sdrun)
    result = pull(sdrun, world, reference, policy)
    assert result.returncode == 125 and len(result.stderr.splitlines()) == 1, result.stderr
    assert store_files(sdrun) == before
    assert not world.skopeo_accepts(reference, policy), f"skopeo accepts {reference}"
    return result.stderr


@needs_systemd
def test_signed_images_are_accepted_by_tag_and_by_digest(sdrun: Sdrun, world: World) -> None:
    reference = world.push("base", "signed:1", signer="trusted")
    digest = world.digest(reference)
    assert (world.signatures("signed", digest) / "signature-1").exists()  # skopeo wrote it to the lookaside
    by_tag = pull(sdrun, world, reference)
    assert by_tag.returncode == 0, by_tag.stderr
    assert by_tag.stdout.strip() == digest
    sdrun("image", "rm", reference)
    by_digest = pull(sdrun, world, f"{world.host}/signed@{digest}")
    assert by_digest.returncode == 0 and by_digest.stdout.strip() == digest, by_digest.stderr
    assert world.skopeo_accepts(reference) and world.skopeo_accepts(f"{world.host}/signed@{digest}")
    keys_data = {**signed_by(world.keys.files["trusted"])}
    keys_data.pop("keyPath")
    keys_data["keyData"] = base64.b64encode(world.keys.files["trusted"].read_bytes()).decode()
    inline = write_json(WORK / "inline.json", {"default": [keys_data]})
    sdrun("image", "rm", f"{world.host}/signed@{digest}")
    assert pull(sdrun, world, reference, inline).returncode == 0  # keyData (armored, base64) works the same
    assert world.skopeo_accepts(reference, inline)


@needs_systemd
def test_unsigned_untrusted_expired_and_revoked_signatures_are_refused(sdrun: Sdrun, world: World) -> None:
    unsigned = world.push("base", "unsigned:1")
    digest = world.digest(unsigned)
    refusal = refused(sdrun, world, unsigned)
    assert f"{world.policy}: {unsigned} refused by signedBy" in refusal
    assert f'scope docker "{world.host}"' in refusal
    assert "no signature at http://127.0.0.1:" in refusal and f"/unsigned@sha256={digest[7:]}/signature-1" in refusal

    untrusted = world.push("base", "untrusted:1", signer="untrusted")
    refusal = refused(sdrun, world, untrusted)
    assert "signature-1: signed by key" in refusal and "which the policy does not trust" in refusal

    # A key that expired, and a signing subkey revoked: gpgv exits 0 for their good signatures (made while
    # they were valid); only its status lines say EXPKEYSIG, REVKEYSIG.
    for name, signer, fragment in (
        ("expired", ("--faked-system-time", "20200101T000100", "-u", world.keys.fingerprints["expired"]),
         "which has expired"),
        ("revoked", ("-u", revoked_subkey(world.keys) + "!"), "which is revoked"),
    ):  # fmt: skip
        reference = world.push("base", f"{name}:1")
        signature = sign_into_lookaside(world, name, digest, reference, signer)
        if name == "revoked":
            revoke_subkey(world.keys)
        keyring = WORK / f"{name}-now.gpg"
        keyring.write_bytes(world.keys.gpg("--export", world.keys.fingerprints[name]))  # (with the revocation)
        gpgv = subprocess.run(["gpgv", "--keyring", str(keyring), str(signature)], capture_output=True, check=False)
        assert gpgv.returncode == 0  # the pitfall
        key_policy = write_json(WORK / f"{name}-policy.json", {"default": [signed_by(keyring)]})
        assert fragment in refused(sdrun, world, reference, key_policy)


def sign_into_lookaside(world: World, repo: str, digest: str, reference: str, signer: tuple[str, ...]) -> Path:
    """A simple signing signature of digest as reference, made by gpg --sign as skopeo would, in the lookaside."""
    payload = json.dumps({
        "critical": {"type": SIMPLE, "image": {"docker-manifest-digest": digest},
                     "identity": {"docker-reference": reference}},
        "optional": {"creator": "test", "timestamp": 1577836900},
    }).encode()  # fmt: skip
    directory = world.signatures(repo, digest)
    directory.mkdir()
    (directory / "signature-1").write_bytes(world.keys.gpg(*signer, "--sign", data=payload))
    return directory / "signature-1"


def revoked_subkey(keys: Keys) -> str:
    """A signing subkey added to the 'revoked' key (whose primary only certifies), then revoked."""
    primary = keys.fingerprints["revoked"]
    keys.gpg("--quick-add-key", primary, "ed25519", "sign", "never")
    listing = keys.gpg("--with-colons", "--list-keys", primary).decode()
    subkey = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")][1]
    return subkey


def revoke_subkey(keys: Keys) -> None:
    commands = b"key 1\nrevkey\ny\n0\n\ny\nsave\n"  # select the subkey, revoke it (no reason), save
    keys.gpg("--command-fd", "0", "--edit-key", keys.fingerprints["revoked"], data=commands)


@needs_systemd
def test_signatures_of_other_content_or_another_repository_are_refused(sdrun: Sdrun, world: World) -> None:
    host = world.host
    # A tag overwritten with other content: the old signature is of the old digest.
    moved = world.push("base", "moved:1", signer="trusted")
    old = world.digest(moved)
    world.push("other", "moved:1")
    new = world.digest(moved)
    assert new != old
    assert "no signature at http://127.0.0.1:" in refused(sdrun, world, moved)

    # An old signature copied under the new digest: it signs the old manifest.
    shutil.copytree(world.signatures("moved", old), world.signatures("moved", new))
    refusal = refused(sdrun, world, moved)
    assert f"it signs manifest {old}, not {new}" in refusal

    # The same digest under another repository, with the signature copied along: the identity is wrong.
    elsewhere = world.push("base", "elsewhere:1")
    assert world.digest(elsewhere) == old
    shutil.copytree(world.signatures("moved", old), world.signatures("elsewhere", old))
    refusal = refused(sdrun, world, elsewhere)
    assert f"it signs the identity {moved}, which matchRepoDigestOrExact does not accept for {elsewhere}" in refusal

    # ... which a policy that says so accepts: remapIdentity of the one repository to the other.
    remap = write_json(
        WORK / "remap.json",
        {"default": [signed_by(world.keys.files["trusted"], type="remapIdentity",
                               prefix=f"{host}/elsewhere", signedPrefix=f"{host}/moved")]},
    )  # fmt: skip
    assert pull(sdrun, world, elsewhere, remap).returncode == 0
    assert world.skopeo_accepts(elsewhere, remap)

    # A scope outside the policy (the same registry by another name), with default reject.
    port = host.rsplit(":", 1)[1]
    refusal = refused(sdrun, world, f"localhost:{port}/moved:1")
    assert "refused by reject (scope default): the policy rejects every image of this scope" in refusal


# --- sigstore (cosign) signatures, written here as cosign writes them ---


def put_blob(host: str, repo: str, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        location = urllib.parse.urljoin(f"http://{host}/", response.headers["Location"])
    separator = "&" if "?" in location else "?"
    upload = urllib.request.Request(
        f"{location}{separator}digest={digest}", data=data, method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    urllib.request.urlopen(upload, timeout=30).close()
    return {"digest": digest, "size": len(data)}


def put_cosign_signature(host: str, repo: str, digest: str, identity: str, key: ec.EllipticCurvePrivateKey) -> None:
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": identity}, "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()  # fmt: skip
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    config = put_blob(host, repo, b"{}")
    layer = put_blob(host, repo, payload)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", **layer,
                    "annotations": {"dev.cosignproject.cosign/signature": signature}}],
    }).encode()  # fmt: skip
    request = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{digest.replace(':', '-')}.sig", data=manifest, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=30).close()


def public_pem(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


@needs_systemd
def test_sigstore_signatures_by_key(sdrun: Sdrun, world: World) -> None:
    host = world.host
    reference = world.push("other", "cosigned:1")
    digest = world.digest(reference)
    signer, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    put_cosign_signature(host, "cosigned", digest, f"{host}/cosigned", signer)  # cosign names no tag
    right, wrong = public_pem(signer, WORK / "cosign.pub"), public_pem(stranger, WORK / "stranger.pub")
    attachments = WORK / "registries-attachments.d"
    attachments.mkdir(exist_ok=True)
    (attachments / "sigstore.yaml").write_text(f"docker:\n  {host}:\n    use-sigstore-attachments: true\n")

    def policy(name: str, key: Path, identity: str | None) -> Path:
        requirement: dict[str, object] = {"type": "sigstoreSigned", "keyPath": str(key)}
        if identity:
            requirement["signedIdentity"] = {"type": identity}
        return write_json(WORK / name, {"default": [{"type": "reject"}],
                                        "transports": {"docker": {f"{host}/cosigned": [requirement]}}})  # fmt: skip

    def cosign_pull(policy_file: Path, registries_d: Path = attachments) -> subprocess.CompletedProcess[str]:
        return sdrun("image", "pull", "--signature-policy", str(policy_file), "--registries.d", str(registries_d),
                     reference, check=False)  # fmt: skip

    accepted = cosign_pull(policy("cosign-ok.json", right, "matchRepository"))
    assert accepted.returncode == 0 and accepted.stdout.strip() == digest, accepted.stderr
    sdrun("image", "rm", reference)
    before = store_files(sdrun)
    for policy_file, fragment in (
        (policy("cosign-wrong.json", wrong, "matchRepository"), "not signed by a key the policy trusts"),
        (policy("cosign-tagless.json", right, None),
         f"it signs the identity {host}/cosigned, which matchRepoDigestOrExact does not accept for {reference}"),
    ):  # fmt: skip
        result = cosign_pull(policy_file)
        assert result.returncode == 125 and len(result.stderr.splitlines()) == 1 and fragment in result.stderr, (
            result.stderr
        )
    off = cosign_pull(policy("cosign-off.json", right, "matchRepository"), world.registries_d)
    assert off.returncode == 125 and "use-sigstore-attachments" in off.stderr, off.stderr
    assert store_files(sdrun) == before
    keyless = write_json(WORK / "keyless.json", {"default": [
        {"type": "sigstoreSigned", "fulcio": {"caPath": "/nonexistent", "oidcIssuer": "x", "subjectEmail": "y"},
         "rekorPublicKeyPath": "/nonexistent"}]})  # fmt: skip
    result = cosign_pull(keyless)
    assert result.returncode == 125 and "not keyless" in result.stderr, result.stderr


# --- the other pull paths: run IMAGE, install, an installed pod's start ---


@needs_systemd
def test_run_refuses_a_rejected_image_before_anything_starts(sdrun: Sdrun, world: World) -> None:
    reference = world.push("base", "run-unsigned:1")
    result = sdrun("run", "--signature-policy", str(world.policy), "--registries.d", str(world.registries_d),
                   "--net", "none", reference, "--", "/bin/true", check=False)  # fmt: skip
    assert result.returncode == 125 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"{reference} refused by signedBy" in result.stderr
    assert sdrun.pods() == [] and sdrun.new_units() == set()
    assert not (sdrun.root / "images").exists()  # a refusal touched no store
    signed = world.push("base", "run-signed:1", signer="trusted")
    ran = sdrun("run", "--rm", "--signature-policy", str(world.policy), "--registries.d", str(world.registries_d),
                "--net", "none", signed, "--", "/bin/echo", "signed", check=False)  # fmt: skip
    assert ran.returncode == 0 and ran.stdout == "signed\n", ran.stderr


@pytest.fixture
def etc_containers(world: World) -> Iterator[None]:
    """The policy and registries.d of the world in /etc/containers (the harness's root is an overlay:
    this never reaches the host), as install and an installed unit's start read them; restored after."""
    etc = Path("/etc/containers")
    saved = (etc / "policy.json").read_bytes() if (etc / "policy.json").exists() else None
    etc.mkdir(exist_ok=True)
    shutil.copy(world.policy, etc / "policy.json")
    shutil.copytree(world.registries_d, etc / "registries.d", dirs_exist_ok=True)
    try:
        yield
    finally:
        shutil.rmtree(etc / "registries.d", ignore_errors=True)
        if saved is None:
            (etc / "policy.json").unlink()
        else:
            (etc / "policy.json").write_bytes(saved)


@needs_systemd
def test_install_and_an_installed_pods_start_refuse_a_rejected_image(
    sdrun: Sdrun, world: World, installed: list[str], etc_containers: None
) -> None:
    unsigned = world.push("base", "install-unsigned:1")
    name = unique_name("sig")
    refusal = sdrun("install", name, "--net", "none", unsigned, check=False)
    assert refusal.returncode == 125 and f"{unsigned} refused by signedBy" in refusal.stderr, refusal.stderr
    assert not Path(f"/etc/systemd/system/sdrun-{name}.service").exists()

    reference = world.push("base", "install:1", signer="trusted")
    sdrun("install", name, "--net", "none", reference, "--", "/bin/sleep", "1000")
    installed.append(name)
    sdrun("image", "rm", reference)  # gone from the store: the next start pulls it again
    world.push("other", "install:1")  # ... and the tag now names content nobody signed
    unit = f"sdrun-{name}.service"
    started = subprocess.run(["systemctl", "start", unit], capture_output=True, text=True, check=False)
    assert started.returncode != 0
    wait_for(lambda: systemctl_show(unit, "ActiveState")["ActiveState"] in ("failed", "inactive"))
    assert systemctl_show(unit, "ExecMainPID")["ExecMainPID"] == "0"  # the app never started
    assert reference not in sdrun("image", "list").stdout
    journal = subprocess.run(["journalctl", "-u", unit, "--no-pager"], capture_output=True, text=True, check=False)
    assert f"{reference} refused by signedBy" in journal.stdout


@needs_systemd
def test_trust_add_asks_copies_the_key_and_edits_the_policy(sdrun: Sdrun, world: World) -> None:
    reference = world.push("base", "trust/one:1", signer="trusted")  # (one digest: a repository of its own each,
    rotated = world.push("base", "trust/two:1", signer="untrusted")  # or the second push replaces the signature)
    policy = WORK / "trust-policy.json"
    policy.unlink(missing_ok=True)
    shown = sdrun("image", "trust", "show", "--signature-policy", str(policy)).stdout
    assert shown == f"no signature policy at {policy}: every image is accepted\n"
    scope = f"{world.host}/trust"  # a namespace: both repositories
    add = ("image", "trust", "add", "--signature-policy", str(policy))
    declined = sdrun(*add, str(world.keys.files["trusted"]), scope, input="n\n", check=False)
    assert declined.returncode == 125 and f"GPG key {world.keys.fingerprints['trusted']}" in declined.stdout
    assert not policy.exists() and not (sdrun.root / "trustedkeys").exists()
    sdrun(*add, str(world.keys.files["trusted"]), scope, input="y\n")
    sdrun("image", "trust", "set", "--signature-policy", str(policy), "default", "reject")
    copied = sdrun.root / "trustedkeys" / f"{world.keys.fingerprints['trusted']}.gpg"
    assert copied.read_bytes() == world.keys.files["trusted"].read_bytes()
    rows = sdrun("image", "trust", "show", "--signature-policy", str(policy)).stdout.splitlines()
    assert rows[2].split() == ["default", "reject"] and rows[3].split() == ["docker", scope, "signedBy", f"({copied})"]
    assert pull(sdrun, world, reference, policy).returncode == 0 and world.skopeo_accepts(reference, policy)
    assert "which the policy does not trust" in refused(sdrun, world, rotated, policy)
    # A second key for the scope joins the first (keyPaths): either one's signature is enough.
    sdrun(*add, "--yes", str(world.keys.files["untrusted"]), scope)
    requirements = json.loads(policy.read_text())["transports"]["docker"][scope]
    assert len(requirements) == 1 and len(requirements[0]["keyPaths"]) == 2
    assert pull(sdrun, world, rotated, policy).returncode == 0 and world.skopeo_accepts(rotated, policy)
    sdrun("image", "trust", "rm", "--signature-policy", str(policy), scope)
    assert "rejects every image" in refused(sdrun, world, reference, policy)


@needs_systemd
def test_image_import_obeys_the_policys_file_transports(sdrun: Sdrun, world: World) -> None:
    """An OCI layout or archive carries no signature sdrun reads: only a scope that accepts anything admits it."""
    layout = str(world.layout.resolve())
    archive = WORK / "base.tar"
    oci_archive = WORK / "base-oci.tar"
    run("skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:base", f"docker-archive:{archive}:x/base:1")
    run("skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:base", f"oci-archive:{oci_archive}:base")
    policy = write_json(
        WORK / "import-policy.json",
        {"default": [{"type": "reject"}],
         "transports": {"oci": {str(Path(layout).parent): [{"type": "insecureAcceptAnything"}]},
                        "docker-archive": {"": [signed_by(world.keys.files["trusted"])]}}},
    )  # fmt: skip
    imported = sdrun("image", "import", "--signature-policy", str(policy), f"oci:{layout}:base", "local/base:1")
    assert imported.returncode == 0  # the layout's parent directory is a scope that accepts anything
    for source, fragment in (
        (f"docker-archive:{archive}", "signedBy (" + str(world.keys.files["trusted"]) + ') (scope docker-archive "")'),
        (f"oci-archive:{oci_archive}", "refused by reject (scope default)"),  # no oci-archive scope: the default
    ):
        before = store_files(sdrun)
        result = sdrun("image", "import", "--signature-policy", str(policy), source, "local/other:1", check=False)
        assert result.returncode == 125 and len(result.stderr.splitlines()) == 1 and fragment in result.stderr, (
            result.stderr
        )
        assert store_files(sdrun) == before


@needs_systemd
def test_an_index_signature_alone_does_not_admit_a_platforms_manifest(sdrun: Sdrun, world: World) -> None:
    """skopeo copy --all --sign-by signs the index and each manifest; a pull checks the manifest it chooses, and
    the index's signature alone (what `cosign sign` without --recursive leaves) admits nothing."""
    umoci_change(world.layout, "base", "arm64", "echo arm64 > platform")
    run("umoci", "config", "--image", f"{world.layout}:arm64", "--architecture=arm64")
    multi_platform(world.layout, "multi", {"linux/amd64": "base", "linux/arm64": "arm64"})
    reference = world.push("multi", "multi:1", "trusted", "--all")
    index = world.digest(reference)
    listing = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"))
    amd64 = next(item["digest"] for item in listing["manifests"] if item["platform"]["architecture"] == "amd64")
    assert (world.signatures("multi", index) / "signature-1").exists()
    accepted = pull(sdrun, world, reference)
    assert accepted.returncode == 0 and accepted.stdout.strip() == amd64, accepted.stderr
    assert world.skopeo_accepts(reference)
    sdrun("image", "rm", reference)
    shutil.rmtree(world.signatures("multi", amd64))
    refusal = refused(sdrun, world, reference)
    assert "no signature at http://127.0.0.1:" in refusal and f"/multi@sha256={amd64[7:]}/signature-1" in refusal
