"""The image store against real peers: Debian's docker-registry on 127.0.0.1 (plain HTTP, HTTPS with a
self-signed certificate, basic and token auth), images built by umoci and pushed by skopeo, archives
written by skopeo and podman, credentials written by podman login, pods run from images under the real
systemd."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, SDRUN, Sdrun, needs_systemd, unique_name
from tests.test_image_support import (
    LocalRegistry,
    add_layer,
    entry,
    local_registry,
    multi_platform,
    run,
    self_signed,
    tar_bytes,
    token_server,
    umoci_change,
    umoci_image,
)

WORK = PROJECT / "build" / "test-image"  # the harness wipes /tmp: keep built images in the project
CREDENTIALS = ("sdrun", "s3cret-pass")


@pytest.fixture(scope="module")
def layout(rootfs: Path) -> Path:
    """umoci images: base (busybox), app (a layer deleting a file and adding some, one opaque dir
    from a hand-written layer, a full config), arm64 and a multi-platform index over both."""
    shutil.rmtree(WORK, ignore_errors=True)
    layout = WORK / "layout"
    umoci_image(layout, "base", rootfs)
    umoci_change(layout, "base", "app", "echo hi > hello; rm bin/ls; mkdir -p srv opaque; echo old > opaque/old")
    add_layer(layout, "app", tar_bytes((entry("opaque/.wh..wh..opq"), b""), (entry("opaque/new"), b"new\n")))
    run(
        "umoci", "config", "--image", f"{layout}:app",
        "--config.cmd=/bin/sh", "--config.cmd=-c", "--config.cmd=echo cmd $FOO; pwd; ls /opaque",
        "--config.env=FOO=from-image", "--config.env=PATH=/bin:/sbin:/image/bin",
        "--config.workingdir=/srv", "--config.label=org.example.team=images",
        "--config.stopsignal=SIGINT", "--config.exposedports=8080/tcp",
    )  # fmt: skip
    umoci_change(layout, "base", "arm64", "echo arm64 > platform")
    run("umoci", "config", "--image", f"{layout}:arm64", "--architecture=arm64")
    umoci_change(layout, "base", "amd64", "echo amd64 > platform")
    multi_platform(layout, "multi", {"linux/amd64": "amd64", "linux/arm64": "arm64"})
    return layout


@pytest.fixture(scope="module")
def registry(layout: Path) -> Iterator[LocalRegistry]:
    with local_registry(WORK / "registry") as started:
        started.push(f"oci:{layout}:app", "app:oci", "--format", "oci")
        started.push(f"oci:{layout}:app", "app:v2s2", "--format", "v2s2")
        started.push(f"oci:{layout}:multi", "multi:latest", "--all")
        yield started


@pytest.fixture(scope="module")
def auth_registry(layout: Path) -> Iterator[LocalRegistry]:
    with local_registry(WORK / "auth-registry", CREDENTIALS) as started:
        started.push(f"oci:{layout}:base", "private/base:1")
        yield started


def tree_files(sdrun: Sdrun) -> list[Path]:
    return sorted((sdrun.root / "images" / "trees").glob("*/root"))


def inspect(sdrun: Sdrun, name: str) -> dict[str, object]:
    details: dict[str, object] = json.loads(sdrun("image", "inspect", name).stdout)
    return details


# --- pulls ---


@pytest.mark.parametrize("tag", ["oci", "v2s2"])
def test_pull_oci_and_docker_schema2(sdrun: Sdrun, registry: LocalRegistry, tag: str) -> None:
    reference = f"{registry.host}/app:{tag}"
    digest = sdrun("image", "pull", f"docker://{reference}").stdout.strip()
    details = inspect(sdrun, reference)
    assert details["digest"] == digest and details["names"] == [reference]
    layers = details["layers"]
    assert isinstance(layers, list) and len(layers) == 3 and all(layer["tree"] for layer in layers)
    top = Path(layers[-1]["tree"])
    assert os.getxattr(top / "opaque", "trusted.overlay.opaque") == b"y"
    whiteout = os.lstat(Path(layers[1]["tree"]) / "bin/ls")
    assert whiteout.st_rdev == 0 and (whiteout.st_mode & 0o170000) == 0o020000
    listing = json.loads(sdrun("image", "list", "--json").stdout)
    assert [image["names"] for image in listing] == [[reference]]


def test_pull_again_fetches_nothing(sdrun: Sdrun, registry: LocalRegistry) -> None:
    sdrun("image", "pull", f"{registry.host}/app:oci")
    blobs = {path: path.stat().st_mtime_ns for path in (sdrun.root / "images/blobs/sha256").iterdir()}
    sdrun("image", "pull", f"{registry.host}/app:oci")
    assert {path: path.stat().st_mtime_ns for path in (sdrun.root / "images/blobs/sha256").iterdir()} == blobs


def test_pull_zstd_and_uncompressed_layers(sdrun: Sdrun, registry: LocalRegistry, layout: Path) -> None:
    zstd_layout = WORK / "zstd"
    shutil.rmtree(zstd_layout, ignore_errors=True)
    run("skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", "--dest-compress", f"oci:{layout}:app",
        f"oci:{zstd_layout}:app")  # fmt: skip
    manifest_types = {
        layer["mediaType"]
        for item in json.loads((zstd_layout / "index.json").read_text())["manifests"]
        for layer in json.loads((zstd_layout / "blobs/sha256" / item["digest"][7:]).read_text())["layers"]
    }
    assert manifest_types == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    registry.push(f"oci:{zstd_layout}:app", "app:zstd")
    registry.push(f"oci:{layout}:app", "app:plain", "--dest-decompress")
    zstd_digest = sdrun("image", "pull", f"{registry.host}/app:zstd").stdout.strip()
    plain_digest = sdrun("image", "pull", f"{registry.host}/app:plain").stdout.strip()
    assert zstd_digest != plain_digest
    assert len(tree_files(sdrun)) == 3  # same diff_ids whatever the compression: one tree per layer


def test_pull_selects_the_platform_from_an_index(sdrun: Sdrun, registry: LocalRegistry) -> None:
    sdrun("image", "pull", f"{registry.host}/multi")
    (tree,) = [path for path in tree_files(sdrun) if (path / "platform").exists()]
    assert (tree / "platform").read_text() == "amd64\n"
    sdrun("image", "pull", "--platform", "linux/arm64", f"{registry.host}/multi")
    assert sorted((path / "platform").read_text() for path in tree_files(sdrun) if (path / "platform").exists()) == [
        "amd64\n",
        "arm64\n",
    ]
    refused = sdrun("image", "pull", "--platform", "linux/s390x", f"{registry.host}/multi", check=False)
    assert refused.returncode == 125
    assert "no image for linux/s390x" in refused.stderr and "linux/amd64, linux/arm64" in refused.stderr


def test_basic_auth_login_and_refusal(sdrun: Sdrun, auth_registry: LocalRegistry, tmp_path: Path) -> None:
    reference = f"{auth_registry.host}/private/base:1"
    env = {**os.environ, "HOME": str(tmp_path)}  # no docker or podman credentials of the host
    refused = sdrun("image", "pull", reference, check=False, env=env)
    assert refused.returncode == 125 and f"sdrun image login {auth_registry.host}" in refused.stderr
    wrong = sdrun("image", "login", "-u", "sdrun", "--password-stdin", auth_registry.host, input="nope\n",
                  check=False, env=env)  # fmt: skip
    assert wrong.returncode == 125 and "refused the credentials" in wrong.stderr
    assert not (sdrun.root / "auth.json").exists()
    sdrun("image", "login", "-u", CREDENTIALS[0], "--password-stdin", auth_registry.host, input=f"{CREDENTIALS[1]}\n",
          env=env)  # fmt: skip
    assert (sdrun.root / "auth.json").stat().st_mode & 0o777 == 0o600
    sdrun("image", "pull", reference, env=env)
    sdrun("image", "logout", auth_registry.host, env=env)
    docker_config = tmp_path / ".docker" / "config.json"  # docker's own file is read too
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"auths": {auth_registry.host: {"auth": "c2RydW46czNjcmV0LXBhc3M="}}}))
    sdrun("image", "rm", reference, env=env)
    sdrun("image", "pull", reference, env=env)


def test_https_with_a_self_signed_certificate(sdrun: Sdrun, layout: Path) -> None:
    keys = self_signed(WORK / "tls")
    with local_registry(WORK / "tls-registry", tls=keys) as secure:
        reference = secure.push(f"oci:{layout}:base", "base:1")  # over HTTPS: the registry speaks nothing else
        refused = sdrun("image", "pull", "--tls-verify=true", reference, check=False)
        assert refused.returncode == 125 and len(refused.stderr.splitlines()) == 1
        assert f"{secure.host}: TLS certificate not trusted" in refused.stderr
        assert "--tls-verify=false" in refused.stderr
        for options in (["--tls-verify=false"], ["--insecure-registry"], []):  # [] : loopback needs no verification
            digest = sdrun("image", "pull", *options, reference).stdout.strip()
            sdrun("image", "rm", reference)
        trusting = {**os.environ, "SSL_CERT_FILE": str(keys / "cert.pem")}  # the certificate as a CA of the system's
        assert sdrun("image", "pull", "--tls-verify=true", reference, env=trusting).stdout.strip() == digest


def test_bearer_token_auth_with_podmans_auth_file(sdrun: Sdrun, layout: Path, tmp_path: Path) -> None:
    with (
        token_server(WORK / "token", CREDENTIALS) as tokens,
        local_registry(WORK / "token-registry", token=tokens.auth) as registry,
    ):
        creds = ":".join(CREDENTIALS)
        run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:base",
            f"docker://{registry.host}/private/base:1")  # fmt: skip
        reference = f"{registry.host}/private/base:1"
        env = {**os.environ, "HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "podman-auth.json")}
        env.pop("XDG_RUNTIME_DIR", None)
        refused = sdrun("image", "pull", reference, check=False, env=env)
        assert refused.returncode == 125 and f"the token service of {registry.host} refused: 401" in refused.stderr
        tokens.scopes.clear()
        run("podman", "login", "--tls-verify=false", "--authfile", str(tmp_path / "podman-auth.json"),
            "-u", CREDENTIALS[0], "-p", CREDENTIALS[1], registry.host)  # fmt: skip
        assert "auths" in json.loads((tmp_path / "podman-auth.json").read_text())
        digest = sdrun("image", "pull", reference, env=env).stdout.strip()
        assert "repository:private/base:pull" in tokens.scopes  # sdrun asked for a token, and the registry took it
        assert inspect(sdrun, reference)["digest"] == digest
        assert not (sdrun.root / "auth.json").exists()  # read from REGISTRY_AUTH_FILE, not copied


def write_policy(sdrun: Sdrun, policy: object) -> None:
    (sdrun.root / "policy.json").write_text(json.dumps(policy))


def refused_by_policy(sdrun: Sdrun, *args: str) -> str:
    """A pull the policy refuses: one line, exit 125, and nothing new in the store."""
    before = sorted((sdrun.root / "images").rglob("*")) if (sdrun.root / "images").exists() else []
    result = sdrun("image", "pull", *args, check=False)
    assert result.returncode == 125 and len(result.stderr.splitlines()) == 1, result.stderr
    after = sorted((sdrun.root / "images").rglob("*")) if (sdrun.root / "images").exists() else []
    new = [path for path in after if path.is_file() and path not in before]
    assert [path for path in new if path.name not in ("lock", "oci-layout")] == []
    return result.stderr


def test_policy_trusted_registries_and_pinned_digests(sdrun: Sdrun, registry: LocalRegistry) -> None:
    host = registry.host
    app = registry_manifest(registry, "app:oci")
    app_digest = (
        "sha256:"
        + hashlib.sha256(
            run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/app:oci").encode()
        ).hexdigest()
    )
    assert app["layers"]
    write_policy(sdrun, {"trusted": ["127.0.0.1:1"]})
    assert f"policy: {host}/app is not in a trusted registry of {sdrun.root}/policy.json" in refused_by_policy(
        sdrun, f"{host}/app:oci"
    )
    write_policy(sdrun, {"trusted": [f"{host}/app"], "pinned": {f"{host}/app": [app_digest]}})
    assert sdrun("image", "pull", f"{host}/app:oci").stdout.strip() == app_digest  # trusted, and the pinned digest
    assert "not in a trusted registry" in refused_by_policy(sdrun, f"{host}/multi")
    v2s2 = refused_by_policy(sdrun, f"{host}/app:v2s2")  # the same image converted: another digest
    assert f"policy: {host}/app:v2s2 is sha256:" in v2s2 and "does not pin" in v2s2
    assert sdrun("image", "pull", "--verify", f"{host}/app:oci").stdout.strip() == app_digest
    index = registry.push(f"docker://{host}/multi:latest", "pinned-multi:1", "--all", "--src-tls-verify=false")
    index_digest = (
        "sha256:"
        + hashlib.sha256(
            run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{index}").encode()
        ).hexdigest()
    )
    write_policy(sdrun, {"pinned": {f"{host}/pinned-multi": [index_digest]}})  # the index's digest pins each platform
    sdrun("image", "pull", "--verify", "--platform", "linux/arm64", index)
    assert "--verify: nothing pins" in refused_by_policy(sdrun, "--verify", f"{host}/multi")
    assert "refuse" not in sdrun("image", "pull", f"{host}/multi").stderr  # unpinned, but no --verify: fine


def test_verify_without_a_policy_needs_a_digest(sdrun: Sdrun, registry: LocalRegistry, layout: Path) -> None:
    host = registry.host
    refusal = refused_by_policy(sdrun, "--verify", f"{host}/app:oci")
    assert f"--verify: nothing pins {host}/app:oci: there is no {sdrun.root}/policy.json" in refusal
    digest = sdrun("image", "pull", f"{host}/app:oci").stdout.strip()  # no policy, no --verify: anything goes
    sdrun("image", "rm", f"{host}/app:oci")
    assert sdrun("image", "pull", "--verify", f"{host}/app@{digest}").stdout.strip() == digest
    assert "is not from a registry" in refused_by_policy(sdrun, "--verify", f"oci:{layout}:app")
    for broken in ("{", '{"trusted": "127.0.0.1"}', '{"pinned": {"a/b": ["sha256:12"]}}', '{"signed": true}'):
        (sdrun.root / "policy.json").write_text(broken)
        assert "policy.json" in refused_by_policy(sdrun, f"{host}/app:oci")


def test_a_tampered_blob_is_refused_and_leaves_nothing(sdrun: Sdrun, layout: Path) -> None:
    with local_registry(WORK / "tampered-registry") as tampered:
        tampered.push(f"oci:{layout}:app", "app:1", "--format", "oci")
        manifest = json.loads(
            run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{tampered.host}/app:1")
        )
        blob = tampered.blob_data(manifest["layers"][-1]["digest"])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        result = sdrun("image", "pull", f"{tampered.host}/app:1", check=False)
    assert result.returncode == 125
    assert f"blob {manifest['layers'][-1]['digest']}" in result.stderr and "does not match" in result.stderr
    assert sdrun("image", "list", "--json").stdout.strip() == "[]"
    assert not (sdrun.root / "images/blobs/sha256" / manifest["layers"][-1]["digest"][7:]).exists()
    sdrun("image", "gc")
    assert list((sdrun.root / "images/blobs/sha256").iterdir()) == []
    assert list((sdrun.root / "images/tmp").iterdir()) == []


def test_a_blob_modified_in_the_store_is_refused(sdrun: Sdrun, registry: LocalRegistry, tmp_path: Path) -> None:
    digest = sdrun("image", "pull", f"{registry.host}/app:oci").stdout.strip()
    config = inspect(sdrun, digest)
    config_blob = (
        sdrun.root
        / "images/blobs/sha256"
        / json.loads((sdrun.root / "images/blobs/sha256" / digest[7:]).read_text())["config"]["digest"][7:]
    )
    config_blob.write_bytes(config_blob.read_bytes().replace(b"from-image", b"evil-image"))
    refused = sdrun("image", "inspect", digest, check=False)
    assert refused.returncode == 125 and "has been modified" in refused.stderr
    assert config["digest"] == digest


def registry_manifest(registry: LocalRegistry, reference: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(
        run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{reference}")
    )
    return manifest


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


PARTIALS: dict[str, Callable[[bytes], bytes]] = {
    "complete": lambda blob: blob,
    "prefix": lambda blob: blob[: len(blob) // 2],
    "corrupt-prefix": lambda blob: flipped(blob[: len(blob) // 2], 100),
    "corrupt-complete": lambda blob: flipped(blob, len(blob) - 1),
    "too-long": lambda blob: blob + b"junk",
}


@pytest.mark.parametrize("case", PARTIALS)
def test_a_partial_blob_is_verified_whole_and_refetched_when_wrong(
    sdrun: Sdrun, registry: LocalRegistry, case: str
) -> None:
    layer = max(registry_manifest(registry, "app:oci")["layers"], key=lambda layer: layer["size"])
    blob = registry.blob_data(layer["digest"]).read_bytes()
    sdrun("image", "gc")  # makes the store
    (sdrun.root / "images/tmp" / f"{layer['digest'][7:]}.partial").write_bytes(PARTIALS[case](blob))
    pulled = sdrun("--debug", "image", "pull", f"{registry.host}/app:oci")
    requests = [line for line in pulled.stderr.splitlines() if f"/blobs/{layer['digest']} from byte" in line]
    refetched = "the partial download did not match: fetching it whole" in pulled.stderr
    if case == "complete":
        assert requests == [] and not refetched  # a whole partial is checked and kept: no Range past its end
    elif case == "prefix":
        assert requests == [f"sdrun: GET /v2/app/blobs/{layer['digest']} from byte {len(blob) // 2}: 206, "
                            f"starting at byte {len(blob) // 2}"] and not refetched  # fmt: skip
    elif case == "too-long":
        assert requests == [f"sdrun: GET /v2/app/blobs/{layer['digest']} from byte 0: 200, starting at byte 0"]
    else:  # the resumed copy fails the digest check: thrown away, fetched whole, in the same pull
        assert refetched and requests[-1].endswith("from byte 0: 200, starting at byte 0"), pulled.stderr
    assert (sdrun.root / "images/blobs/sha256" / layer["digest"][7:]).read_bytes() == blob
    assert list((sdrun.root / "images/tmp").glob("*.partial")) == []
    assert all(item["tree"] for item in inspect(sdrun, f"{registry.host}/app:oci")["layers"])  # type: ignore[attr-defined]


def kill_mid_download(sdrun: Sdrun, reference: str, blob: dict[str, Any]) -> int:
    """Start a pull and SIGKILL it once the blob's partial file is part-way: returns how much it holds."""
    partial = sdrun.root / "images/tmp" / f"{blob['digest'][7:]}.partial"
    process = subprocess.Popen([SDRUN, "--root", str(sdrun.root), "image", "pull", "-q", reference])
    try:
        deadline = time.monotonic() + 60
        while not (partial.exists() and 1 << 20 <= partial.stat().st_size < blob["size"] // 2):
            assert process.poll() is None, "the pull ended before it could be killed mid-download"
            assert time.monotonic() < deadline, "the download never got under way"
            time.sleep(0.001)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    size = partial.stat().st_size
    assert 0 < size < blob["size"]
    return size


def test_killed_pulls_are_completed_by_the_next_and_cleaned_by_gc(
    sdrun: Sdrun, layout: Path, registry: LocalRegistry
) -> None:
    big = WORK / "big"
    shutil.rmtree(big, ignore_errors=True)
    shutil.copytree(layout, big)
    for layer, megabytes in enumerate((64, 8, 8)):  # incompressible, so the transfer takes a while
        umoci_change(
            big, "base" if layer == 0 else "big", "big", f"head -c {megabytes * 1000000} /dev/urandom > blob{layer}"
        )
    registry.push(f"oci:{big}:big", "big:1")
    reference = f"{registry.host}/big:1"
    largest = max(registry_manifest(registry, "big:1")["layers"], key=lambda layer: layer["size"])
    for delay in (0.05, 0.2, 0.4, 0.7, 1.0):  # killed at any point: gc leaves a clean store
        process = subprocess.Popen([SDRUN, "--root", str(sdrun.root), "image", "pull", "-q", reference])
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
    leftovers = sdrun("image", "gc").stdout
    assert list((sdrun.root / "images/tmp").iterdir()) == []
    assert all((tree.parent / "rendered").exists() for tree in tree_files(sdrun)), leftovers
    sdrun("image", "rm", reference, check=False)  # if one of those pulls finished, start from nothing
    sdrun("image", "gc")
    assert list((sdrun.root / "images/blobs/sha256").iterdir()) == []
    held = kill_mid_download(sdrun, reference, largest)
    resumed = sdrun("--debug", "image", "pull", reference)  # resumes the partial blob where it stopped
    assert f"/blobs/{largest['digest']} from byte {held}: 206, starting at byte {held}" in resumed.stderr
    assert "did not match" not in resumed.stderr
    stored = sdrun.root / "images/blobs/sha256" / largest["digest"][7:]
    assert stored.read_bytes() == registry.blob_data(largest["digest"]).read_bytes()
    for layer in inspect(sdrun, reference)["layers"]:  # type: ignore[attr-defined]
        assert layer["tree"]
    assert not any(line.startswith("removed tree") for line in sdrun("image", "gc").stdout.splitlines())


def test_which_names_the_image_and_layer(sdrun: Sdrun, registry: LocalRegistry) -> None:
    reference = f"{registry.host}/app:oci"
    sdrun("image", "pull", reference)
    layers = inspect(sdrun, reference)["layers"]
    (found,) = json.loads(sdrun("image", "which", "--json", "/hello").stdout)
    assert (found["image"], found["layer"]) == (reference, layers[1]["digest"])  # type: ignore[index]
    assert sdrun("image", "which", "/bin/ls", check=False).returncode == 1  # deleted by a whiteout
    by_name = json.loads(sdrun("image", "which", "--json", "new").stdout)
    assert [(item["path"], item["layer"]) for item in by_name] == [("/opaque/new", layers[2]["digest"])]  # type: ignore[index]


def test_which_sees_the_image_as_overlayfs_does(sdrun: Sdrun) -> None:
    """Whiteouts of a directory, an opaque directory, a directory replaced by a symlink, and paths
    through symlinked directories (relative, absolute, with ..), in an image umoci assembles."""
    layout = WORK / "which"
    shutil.rmtree(layout, ignore_errors=True)
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:which")
    directory, symlink = tarfile.DIRTYPE, tarfile.SYMTYPE
    lower = tar_bytes(
        *((entry(name, directory, 0o755), b"") for name in ("usr", "usr/lib", "etc", "etc/ssl", "data", "opt")),
        (entry("opt/tool", directory, 0o755), b""),
        (entry("usr/lib/libfoo.so.1"), b"lower\n"),
        (entry("usr/lib/libbaz.so"), b"baz\n"),
        (entry("lib", symlink, linkname="usr/lib"), b""),
        (entry("abs", symlink, linkname="/usr/lib"), b""),
        (entry("etc/ssl/cert.pem"), b"cert\n"),
        (entry("data/old"), b"old\n"),
        (entry("opt/tool/bin"), b"tool\n"),
    )
    upper = tar_bytes(
        *((entry(name, directory, 0o755), b"") for name in ("usr", "usr/lib", "etc", "data", "opt")),
        (entry("etc/.wh.ssl"), b""),
        (entry("data/.wh..wh..opq"), b""),
        (entry("data/new"), b"new\n"),
        (entry("usr/lib/libfoo.so.1"), b"upper\n"),
        (entry("usr/lib/.wh.libbaz.so"), b""),
        (entry("opt/tool", symlink, linkname="/usr/lib"), b""),
    )
    add_layer(layout, "which", lower)
    add_layer(layout, "which", upper)
    sdrun("image", "import", f"oci:{layout}:which", "local/which:1")
    bottom, top = (layer["digest"] for layer in inspect(sdrun, "local/which:1")["layers"])  # type: ignore[attr-defined]

    def which(path: str) -> list[tuple[str, str, str]]:
        result = sdrun("image", "which", "--json", path, check=False)
        found = json.loads(result.stdout)
        assert result.returncode == (0 if found else 1)
        return [(item["path"], item["resolved"], item["layer"]) for item in found]

    for hidden in ("/etc/ssl/cert.pem", "/etc/ssl", "/data/old", "/opt/tool/bin", "/usr/lib/libbaz.so"):
        assert which(hidden) == [], hidden
    assert which("/data/new") == [("/data/new", "/data/new", top)]
    foo = "/usr/lib/libfoo.so.1"
    for through in ("/lib/libfoo.so.1", "/abs/libfoo.so.1", "/abs/../lib/libfoo.so.1", "/opt/tool/libfoo.so.1"):
        assert which(through) == [(through, foo, top)], through
    assert which("/lib") == [("/lib", "/lib", bottom)]  # the symlink itself
    assert which("/opt/tool") == [("/opt/tool", "/opt/tool", top)]
    for name in ("cert.pem", "old", "bin", "libbaz.so"):
        assert which(name) == [], name
    assert which("libfoo.so.1") == [(foo, foo, top)]  # once, from the layer it is visible from
    text = sdrun("image", "which", "/lib/libfoo.so.1").stdout
    assert text == f"localhost/local/which:1  /lib/libfoo.so.1 (at {foo})  layer {top[:19]}\n"


def test_device_nodes_of_an_image_are_kept_and_stay_closed_to_its_pods(sdrun: Sdrun, layout: Path) -> None:
    """mmdebstrap's /dev/console, and a node of the host's disk where stage1's /dev does not hide it."""
    nodes = WORK / "nodes"
    shutil.rmtree(nodes, ignore_errors=True)
    shutil.copytree(layout, nodes)
    first = sorted(os.listdir("/sys/dev/block"))[0]  # a block device of the host
    major, minor = (int(number) for number in first.split(":"))
    console, disk = entry("dev/console", tarfile.CHRTYPE, 0o600), entry("srv/disk", tarfile.BLKTYPE, 0o666)
    (console.devmajor, console.devminor), (disk.devmajor, disk.devminor) = (5, 1), (major, minor)
    directories = ((entry(name, tarfile.DIRTYPE, 0o755), b"") for name in ("dev", "srv"))
    add_layer(nodes, "base", tar_bytes(*directories, (console, b""), (disk, b"")))
    sdrun("image", "import", f"oci:{nodes}:base", "nodes:1")
    top = inspect(sdrun, "nodes:1")["layers"][-1]["tree"]  # type: ignore[index]
    assert os.stat(Path(str(top)) / "srv/disk").st_rdev == os.makedev(major, minor)
    script = "stat -c '%F %t:%T' /srv/disk; head -c 1 /srv/disk > /dev/null; stat -c %F /dev/console"
    result = sdrun("run", "--rm", "--net", "none", "nodes:1", "--", "sh", "-c", script, check=False)
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert lines[0] == f"block special file {major:x}:{minor:x}"
    assert "head: /srv/disk: Operation not permitted" in lines  # the unit's DevicePolicy, not the driver
    assert result.returncode == 1  # no console: stage1's /dev has none without a terminal


def test_a_layer_refused_halfway_leaves_nothing_in_the_store(sdrun: Sdrun, layout: Path) -> None:
    broken = WORK / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(layout, broken)
    filler = os.urandom(1 << 20)
    add_layer(broken, "base", tar_bytes((entry("big"), filler), (entry("../escape"), b"x")))
    sdrun("image", "gc")  # makes the store
    for source in (f"oci:{broken}:base", f"oci-archive:{WORK / 'broken.tar'}"):
        if source.startswith("oci-archive:"):
            run("skopeo", "copy", f"oci:{broken}:base", source)
        for verb in (("image", "import", source, "broken:1"), ("run", "--rm", "--net", "none", source, "--", "true")):
            result = sdrun(*verb, check=False)
            assert result.returncode == 125 and "climbs out of the layer with '..'" in result.stderr, result.stderr
            assert list((sdrun.root / "images/blobs/sha256").iterdir()) == []
            assert list((sdrun.root / "images/trees").iterdir()) == []
            assert not list((sdrun.root / "images/tmp").glob("*.partial"))
    assert sdrun("image", "list", "--json").stdout.strip() == "[]" and sdrun.pods() == []


# --- imports ---


def test_import_archives_written_by_skopeo(sdrun: Sdrun, layout: Path) -> None:
    oci_archive, docker_archive = WORK / "app-oci.tar", WORK / "app-docker.tar"
    for path in (oci_archive, docker_archive):
        path.unlink(missing_ok=True)
    run("skopeo", "copy", "--quiet", f"oci:{layout}:app", f"oci-archive:{oci_archive}:app")
    run("skopeo", "copy", "--quiet", f"oci:{layout}:app", f"docker-archive:{docker_archive}:example.org/app:2")
    sdrun("image", "import", f"oci-archive:{oci_archive}", "local/app:oci")
    sdrun("image", "import", f"docker-archive:{docker_archive}")
    sdrun("image", "import", f"oci:{layout}:app", "local/app:layout")
    names = sorted(name for image in json.loads(sdrun("image", "list", "--json").stdout) for name in image["names"])
    assert names == ["example.org/app:2", "localhost/local/app:layout", "localhost/local/app:oci"]
    assert len(tree_files(sdrun)) == 3  # the same three layers, whatever the transport
    # Named as podman loads it: a ref.name that is a bare tag is a local image's name.
    digest = sdrun("image", "import", f"oci-archive:{oci_archive}").stdout.strip()
    app = inspect(sdrun, "app")
    assert "localhost/app:latest" in app["names"] and app["digest"] == digest  # type: ignore[operator]
    run("skopeo", "copy", "--quiet", f"oci:{layout}:app", f"oci-archive:{WORK / 'tagged.tar'}:web:2")
    sdrun("image", "import", f"oci-archive:{WORK / 'tagged.tar'}")
    assert "localhost/web:2" in inspect(sdrun, "web:2")["names"]  # type: ignore[operator]
    output = sdrun("run", "--rm", "--net", "none", "web:2", "--", "cat", "/hello").stdout  # found by its short name
    assert output == "hi\n"
    rootfs_tar = sdrun("image", "import", "--rootfs-tar", str(WORK / "tagged.tar"), "nameless", check=False)
    assert rootfs_tar.returncode == 0 and inspect(sdrun, "nameless")["names"] == ["localhost/nameless:latest"]
    assert sdrun("image", "inspect", "docker.io/library/app", check=False).returncode == 125  # no registry's


def store_files(sdrun: Sdrun) -> tuple[set[str], set[str]]:
    images = sdrun.root / "images"
    blobs = {path.name for path in (images / "blobs/sha256").iterdir()}
    return blobs, {path.name for path in (images / "trees").iterdir()}


def collected(sdrun: Sdrun) -> list[str]:
    """What `image gc` removed, but for per-tree lock files (which every pull leaves)."""
    lines = sdrun("image", "gc").stdout.splitlines()
    return [line for line in lines if not line.endswith(".tree-lock")]


def test_rm_takes_one_name_and_the_content_goes_with_the_last(sdrun: Sdrun, layout: Path) -> None:
    for name in ("local/app:1", "local/app:2"):
        sdrun("image", "import", f"oci:{layout}:app", name)
    digest = sdrun("image", "import", f"oci:{layout}:base", "local/base:1").stdout.strip()
    (app,) = [image for image in json.loads(sdrun("image", "list", "--json").stdout) if image["digest"] != digest]
    assert sorted(app["names"]) == ["localhost/local/app:1", "localhost/local/app:2"]
    blobs, trees = store_files(sdrun)
    by_digest = sdrun("image", "rm", app["digest"], check=False)
    assert by_digest.returncode == 125 and "has 2 names" in by_digest.stderr
    assert sdrun("image", "rm", "local/app:1").stdout == "untagged localhost/local/app:1\n"
    assert inspect(sdrun, "local/app:2")["names"] == ["localhost/local/app:2"]
    assert sdrun("image", "inspect", "local/app:1", check=False).returncode == 125
    assert store_files(sdrun) == (blobs, trees)  # the image is still named: nothing of it goes
    assert collected(sdrun) == []
    removed = sdrun("image", "rm", "localhost/local/app:2").stdout.splitlines()
    assert removed[0] == "untagged localhost/local/app:2" and f"removed blob {app['digest']}" in removed
    base = inspect(sdrun, "local/base:1")
    manifest = json.loads((sdrun.root / "images/blobs/sha256" / digest[7:]).read_text())
    base_blobs = {digest[7:], manifest["config"]["digest"][7:]}
    base_blobs |= {layer["digest"][7:] for layer in base["layers"]}  # type: ignore[attr-defined]
    base_trees = {Path(layer["tree"]).parent.name for layer in base["layers"]}  # type: ignore[attr-defined]
    assert store_files(sdrun) == (base_blobs, base_trees)  # the shared base layer stays, with its tree
    assert collected(sdrun) == []
    sdrun("image", "rm", "local/base:1")
    assert store_files(sdrun) == (set(), set())


def test_import_archives_written_by_podman_save(sdrun: Sdrun, layout: Path) -> None:
    storage = WORK / "podman"
    shutil.rmtree(storage, ignore_errors=True)
    podman = ("podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs")
    run(*podman, "pull", "-q", f"oci:{layout}:app")
    image_id = run(*podman, "images", "-q").split()[0]
    run(*podman, "tag", image_id, "example.org/podman/app:1")
    archives = {kind: storage / f"{kind}.tar" for kind in ("docker-archive", "oci-archive")}
    for kind, path in archives.items():
        run(*podman, "save", "-q", "--format", kind, "-o", str(path), "example.org/podman/app:1")
    sdrun("image", "import", f"docker-archive:{archives['docker-archive']}")  # named by its RepoTags
    sdrun("image", "import", f"oci-archive:{archives['oci-archive']}", "local/podman:oci")
    names = sorted(name for image in json.loads(sdrun("image", "list", "--json").stdout) for name in image["names"])
    assert names == ["example.org/podman/app:1", "localhost/local/podman:oci"]
    from_docker, from_oci = inspect(sdrun, "example.org/podman/app:1"), inspect(sdrun, "local/podman:oci")
    diff_ids = [layer["diff_id"] for layer in from_oci["layers"]]  # type: ignore[attr-defined]
    assert [layer["diff_id"] for layer in from_docker["layers"]] == diff_ids  # type: ignore[attr-defined]
    assert len(tree_files(sdrun)) == 3  # the same layers, one tree each
    assert from_docker["config"]["config"]["WorkingDir"] == "/srv"  # type: ignore[index]
    hello = json.loads(sdrun("image", "which", "--json", "/hello").stdout)
    assert sorted(item["image"] for item in hello) == names
    assert sdrun("image", "which", "/bin/ls", check=False).returncode == 1  # the whiteout survived the round trip


def test_import_a_rootfs_tarball_and_export_it(sdrun: Sdrun, rootfs: Path) -> None:
    tarball = WORK / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(rootfs, arcname=".")
    sdrun("image", "import", "--rootfs-tar", str(tarball), "localhost/busybox:1")
    details = inspect(sdrun, "localhost/busybox:1")
    assert len(details["layers"]) == 1  # type: ignore[arg-type]
    exported = WORK / "exported.tar"
    sdrun("image", "export", "localhost/busybox:1", str(exported))
    seen = json.loads(run("skopeo", "inspect", "--raw", f"oci-archive:{exported}"))
    assert seen["layers"][0]["digest"] == details["layers"][0]["digest"]  # type: ignore[index]


def test_export_to_a_docker_archive_and_an_oci_archive(sdrun: Sdrun, layout: Path, tmp_path: Path) -> None:
    digest = sdrun("image", "import", f"oci:{layout}:app", "local/app:1").stdout.strip()
    config = inspect(sdrun, digest)
    docker_archive, oci_archive = WORK / "exported-docker.tar", WORK / "exported-oci.tar"
    assert sdrun("image", "export", "local/app:1", f"docker-archive:{docker_archive}").stdout == f"{docker_archive}\n"
    sdrun("image", "export", "local/app:1", f"oci-archive:{oci_archive}")
    with tarfile.open(docker_archive) as archive:
        listing = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert listing[0]["RepoTags"] == ["localhost/local/app:1"]
    raw = json.loads(run("skopeo", "inspect", "--raw", f"docker-archive:{docker_archive}"))
    diff_ids = [layer["diff_id"] for layer in config["layers"]]  # type: ignore[attr-defined]
    assert [layer["digest"] for layer in raw["layers"]] == diff_ids  # uncompressed: their digests are the diff_ids
    assert json.loads(run("skopeo", "inspect", "--raw", f"oci-archive:{oci_archive}"))["layers"] == [
        {key: layer[key] for key in ("mediaType", "digest", "size")}
        for layer in config["layers"]  # type: ignore[attr-defined]
    ]
    other = Sdrun(sdrun.root / "other")
    other.root.mkdir()
    other("image", "import", f"docker-archive:{docker_archive}")  # named by its RepoTags
    assert inspect(other, "local/app:1")["config"] == config["config"]
    output = other("run", "--rm", "--net", "none", "local/app:1", "--", "cat", "/hello").stdout
    assert output == "hi\n"
    missing_dir = sdrun("image", "export", "local/app:1", f"docker-archive:{tmp_path}/no/such/x.tar", check=False)
    assert missing_dir.returncode == 125 and "cannot write" in missing_dir.stderr
    assert not list(tmp_path.iterdir())


def test_bad_references_are_one_line_errors(sdrun: Sdrun) -> None:
    for reference, complaint in [
        ("UPPER/case", "invalid image reference"),
        ("oci:/nonexistent", "not an OCI layout"),
        ("docker://127.0.0.1:1/nothing", "cannot reach 127.0.0.1:1"),
    ]:
        result = sdrun("image", "pull", reference, check=False, timeout=120)
        assert result.returncode == 125 and complaint in result.stderr and len(result.stderr.splitlines()) == 1


# --- pods ---


@needs_systemd
def test_run_image_merges_its_config(sdrun: Sdrun, registry: LocalRegistry) -> None:
    reference = f"{registry.host}/app:oci"
    result = sdrun("run", "--rm", "--stage1", "fly", reference)  # pulled on first use
    assert result.stdout.splitlines() == ["cmd from-image", "/srv", "new"]
    script = "echo $FOO $PATH; pwd; cat /hello; test -e /bin/ls || echo ls-deleted"
    overridden = sdrun(
        "run", "--rm", "--stage1", "fly", "-e", "FOO=cli", "-w", "/", reference, "--", "sh", "-c", script
    )
    assert overridden.stdout.splitlines() == ["cli /bin:/sbin:/image/bin", "/", "hi", "ls-deleted"]
    entry_point = sdrun("run", "--rm", "--stage1", "fly", "--entrypoint", "/bin/echo", reference, "from", "entrypoint")
    assert entry_point.stdout.strip() == "from entrypoint"
    name = unique_name("img")
    sdrun("run", "-d", "--name", name, "--stage1", "fly", reference, "--", "sleep", "60")
    status = json.loads(sdrun("status", "--json", name).stdout)
    assert status["state"] == "running"
    assert sdrun("enter", name, "cat", "/hello").stdout == "hi\n"
    pod_dir = next(path for path in (sdrun.root / "pods").iterdir() if (path / "image").exists())
    spec = json.loads((pod_dir / "pod.json").read_text())["spec"]
    assert spec["labels"]["org.example.team"] == "images" and spec["stop_signal"] == "SIGINT"
    assert "port 8080/tcp" in (pod_dir / "image").read_text()
    by_digest = f"{registry.host}/app@{inspect(sdrun, reference)['digest']}"
    sdrun("image", "pull", by_digest)  # a second name for the same image
    assert sdrun("image", "rm", reference).stdout == f"untagged {reference}\n"  # not its last name: no refusal
    refused = sdrun("image", "rm", by_digest, check=False)
    assert refused.returncode == 125 and "used by 1 pod(s)" in refused.stderr
    assert sdrun("image", "rm", "-f", by_digest).stdout == f"untagged {by_digest}\n"  # the pod's content stays
    sdrun("image", "gc")
    assert sdrun("enter", name, "cat", "/hello").stdout == "hi\n"  # its trees were kept
    sdrun("rm", "-f", name)
    assert any(line.startswith("removed tree") for line in sdrun("image", "gc").stdout.splitlines())
    assert tree_files(sdrun) == []


@needs_systemd
def test_run_passes_platform_tls_and_verify_to_its_pull(sdrun: Sdrun, registry: LocalRegistry, layout: Path) -> None:
    multi = f"{registry.host}/multi"
    cat = ("run", "--rm", "--stage1", "fly")
    assert sdrun(*cat, multi, "--", "cat", "/platform").stdout == "amd64\n"
    assert sdrun(*cat, "--platform", "linux/arm64", multi, "--", "cat", "/platform").stdout == "arm64\n"  # pulled
    assert sdrun(*cat, "--platform", "linux/arm64", multi, "--", "cat", "/platform").stdout == "arm64\n"  # stored
    other = sdrun(*cat, "--platform", "linux/s390x", multi, "--", "true", check=False)
    assert other.returncode == 125 and "no image for linux/s390x" in other.stderr
    unpinned = sdrun(*cat, "--verify", f"{registry.host}/app:oci", "--", "true", check=False)
    assert unpinned.returncode == 125 and "--verify: nothing pins" in unpinned.stderr
    write_policy(sdrun, {"trusted": ["127.0.0.1:1"]})
    untrusted = sdrun(*cat, f"{registry.host}/app:oci", "--", "true", check=False)
    assert untrusted.returncode == 125 and "not in a trusted registry" in untrusted.stderr
    (sdrun.root / "policy.json").unlink()
    keys = self_signed(WORK / "tls-run")
    with local_registry(WORK / "tls-run-registry", tls=keys) as secure:
        reference = secure.push(f"oci:{layout}:base", "base:1")
        refused = sdrun(*cat, "--tls-verify=true", reference, "--", "true", check=False)
        assert refused.returncode == 125 and "TLS certificate not trusted" in refused.stderr
        trusting = {**os.environ, "SSL_CERT_FILE": str(keys / "cert.pem")}
        assert sdrun(*cat, "--tls-verify=true", reference, "--", "echo", "ok", env=trusting).stdout == "ok\n"
    assert sdrun.pods() == []  # the refused runs left no pod
    rootfs_run = sdrun("run", "--rootfs", str(PROJECT / "build/rootfs"), "--platform", "linux/arm64", "--", "true",
                       check=False)  # fmt: skip
    assert rootfs_run.returncode == 125 and "are for image pods" in rootfs_run.stderr


@needs_systemd
def test_an_image_of_another_platform_runs_only_when_asked_for(sdrun: Sdrun, registry: LocalRegistry) -> None:
    multi = f"{registry.host}/multi"
    sdrun("image", "pull", "--platform", "linux/arm64", multi)  # stored under the plain tag
    cat = ("run", "--rm", "--stage1", "fly")
    message = f"sdrun: image {multi} is for linux/arm64, not this host's linux/amd64 (hint: "
    for refused in (
        sdrun(*cat, multi, "--", "cat", "/platform", check=False),
        sdrun("generate", "--name", "other", multi, check=False),  # and so install and the generator
    ):
        assert refused.returncode == 125 and refused.stderr.startswith(message), refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stdout == ""
    assert sdrun.pods() == []
    assert sdrun(*cat, "--platform", "linux/arm64", multi, "--", "cat", "/platform").stdout == "arm64\n"
    sdrun("image", "pull", multi)  # the host's, under the same tag
    assert sdrun(*cat, multi, "--", "cat", "/platform").stdout == "amd64\n"


@needs_systemd
def test_fifty_pods_share_one_copy_of_the_layers(sdrun: Sdrun, registry: LocalRegistry) -> None:
    reference = f"{registry.host}/app:oci"
    sdrun("image", "pull", reference)
    trees = tree_files(sdrun)
    names = [unique_name("share") for _ in range(50)]
    for number, name in enumerate(names):
        script = f"echo {number} > /hello; grep -c ' / ' /proc/self/mountinfo >/dev/null; echo started"
        assert sdrun("run", "--name", name, "--stage1", "fly", reference, "--", "/bin/sh", "-c", script).stdout == (
            "started\n"
        )
    assert tree_files(sdrun) == trees  # no tree was copied
    lowers = {(path / "image").read_text().split("\nlower ", 1)[1] for path in (sdrun.root / "pods").iterdir()}
    assert len(lowers) == 1  # every pod stacks the same trees
    uppers = sorted((path / "stage1/rootfs-upper/hello").read_text() for path in (sdrun.root / "pods").iterdir())
    assert uppers == sorted(f"{number}\n" for number in range(50))  # each pod's writes are its own
    hello = next(tree / "hello" for tree in trees if (tree / "hello").exists())
    assert hello.read_text() == "hi\n" and hello.stat().st_nlink == 1
    sdrun("rm", *names)
