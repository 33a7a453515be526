"""Real third-party peers for the image tests (no tests here): Debian's docker-registry on 127.0.0.1
(over HTTPS with openssl's self-signed certificates, with htpasswd or token auth), a token service
signing its JWTs with openssl, and OCI images built with umoci and pushed with skopeo."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    credentials: tuple[str, str] | None
    process: subprocess.Popen[bytes]

    def push(self, source: str, repo: str, *extra: str) -> str:
        """skopeo copy SOURCE docker://HOST/REPO; returns the pushed reference."""
        target = f"{self.host}/{repo}"
        creds = ["--dest-creds", ":".join(self.credentials)] if self.credentials else []
        run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", *creds, *extra, source, f"docker://{target}")
        return target

    def blob_data(self, digest: str) -> Path:
        hex_digest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def run(*argv: str, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class TokenAuth:
    """Token auth settings for docker-registry: where clients get tokens, and the certificate they are signed with."""

    realm: str
    service: str
    issuer: str
    certificate: Path


@contextlib.contextmanager
def local_registry(
    directory: Path,
    credentials: tuple[str, str] | None = None,
    *,
    tls: Path | None = None,
    token: TokenAuth | None = None,
) -> Iterator[LocalRegistry]:
    """docker-registry on 127.0.0.1: plain HTTP, or HTTPS with tls/cert.pem and tls/key.pem; basic auth with
    credentials (htpasswd), or token auth."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    listen = f"addr: '127.0.0.1:{port}'"
    if tls:
        listen += f", tls: {{certificate: {tls / 'cert.pem'}, key: {tls / 'key.pem'}}}"
    config = [
        "version: 0.1",
        "log: {level: error}",
        f"storage: {{filesystem: {{rootdirectory: {directory / 'storage'}}}, delete: {{enabled: true}}}}",
        f"http: {{{listen}}}",
    ]
    if credentials:
        htpasswd = run("htpasswd", "-Bbn", *credentials)
        (directory / "htpasswd").write_text(htpasswd)
        config.append(f"auth: {{htpasswd: {{realm: sdrun-test, path: {directory / 'htpasswd'}}}}}")
    if token:
        config.append(
            f"auth: {{token: {{realm: '{token.realm}', service: {token.service}, issuer: {token.issuer}, "
            f"rootcertbundle: {token.certificate}}}}}"
        )
    (directory / "config.yml").write_text("\n".join(config) + "\n")
    log = (directory / "registry.log").open("wb")
    process = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")], stdout=log, stderr=log)
    try:
        _wait_for(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/", process)
        yield LocalRegistry(f"127.0.0.1:{port}", directory / "storage", credentials, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def self_signed(directory: Path) -> Path:
    """A key and a self-signed certificate for 127.0.0.1 (directory/key.pem, cert.pem), made by openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(directory / "key.pem"),
        "-out", str(directory / "cert.pem"))  # fmt: skip
    return directory


@dataclass
class TokenServer:
    auth: TokenAuth
    scopes: list[str]  # the scope of every token it gave out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextlib.contextmanager
def token_server(directory: Path, credentials: tuple[str, str]) -> Iterator[TokenServer]:
    """A token service as docker-registry's token auth expects one: GET /token?service=&scope= with Basic
    credentials answers a JWT (RS256, signed by openssl with a self-signed key whose certificate rides in
    x5c and is the registry's rootcertbundle) granting what the scope asks."""
    keys = self_signed(directory)
    der = subprocess.run(
        ["openssl", "x509", "-in", str(keys / "cert.pem"), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    port = free_port()
    auth = TokenAuth(f"http://127.0.0.1:{port}/token", "sdrun-test", "sdrun-issuer", keys / "cert.pem")
    served = TokenServer(auth, [])
    expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()

    def sign(claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(keys / "key.pem")],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
                served.scopes.append(scope)
            now = int(time.time())
            claims = {
                "iss": auth.issuer,
                "sub": credentials[0],
                "aud": query.get("service", [""])[0],
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": os.urandom(8).hex(),
                "access": access,
            }
            body = json.dumps({"token": sign(claims)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"docker-registry exited {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1, context=unverified).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.05)
    raise AssertionError("docker-registry did not come up")


# --- images, built by umoci ---


def umoci_image(layout: Path, tag: str, rootfs: Path, *config: str) -> str:
    """A one-layer image of rootfs (copied), then `umoci config` with the given flags. Returns oci:LAYOUT:TAG."""
    if not (layout / "index.json").exists():
        run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:{tag}")
    bundle = layout.parent / f"bundle-{tag}"
    shutil.rmtree(bundle, ignore_errors=True)
    run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
    run("cp", "-a", f"{rootfs}/.", str(bundle / "rootfs"))
    run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    shutil.rmtree(bundle)
    if config:
        run("umoci", "config", "--image", f"{layout}:{tag}", *config)
    return f"oci:{layout}:{tag}"


def umoci_change(layout: Path, source_tag: str, tag: str, change: str) -> str:
    """A new layer over source_tag: unpack, run the shell snippet `change` in the rootfs, repack as tag."""
    bundle = layout.parent / f"bundle-{tag}"
    shutil.rmtree(bundle, ignore_errors=True)
    run("umoci", "unpack", "--image", f"{layout}:{source_tag}", str(bundle))
    run("sh", "-ec", change, cwd=bundle / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    shutil.rmtree(bundle)
    return f"oci:{layout}:{tag}"


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, linkname, 1_700_000_000
    return info


def add_layer(layout: Path, tag: str, layer: bytes) -> str:
    """Add a hand-written layer tar verbatim (umoci raw add-layer): for what umoci never writes, like opaque dirs."""
    path = layout.parent / f"layer-{hashlib.sha256(layer).hexdigest()[:12]}.tar"
    path.write_bytes(layer)
    run("umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", str(path))
    return f"oci:{layout}:{tag}"


def multi_platform(layout: Path, tag: str, per_platform: dict[str, str]) -> str:
    """Tag an OCI index over existing tags, one per platform ('linux/arm64': 'tag-arm64'), for skopeo --all."""
    index = json.loads((layout / "index.json").read_text())
    by_tag = {item["annotations"]["org.opencontainers.image.ref.name"]: item for item in index["manifests"]}
    manifests = []
    for platform, source_tag in per_platform.items():
        os_name, architecture = platform.split("/")
        descriptor = dict(by_tag[source_tag])
        descriptor.pop("annotations", None)
        descriptor["platform"] = {"os": os_name, "architecture": architecture}
        manifests.append(descriptor)
    blob = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    ).encode()
    digest = hashlib.sha256(blob).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(blob)
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": f"sha256:{digest}",
            "size": len(blob),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    return f"oci:{layout}:{tag}"
