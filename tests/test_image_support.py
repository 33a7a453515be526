"""Real third-party peers for the image tests (no tests here): Debian's docker-registry on 127.0.0.1,
and OCI images built with umoci and pushed with skopeo."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
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


@contextlib.contextmanager
def local_registry(directory: Path, credentials: tuple[str, str] | None = None) -> Iterator[LocalRegistry]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = [
        "version: 0.1",
        "log: {level: error}",
        f"storage: {{filesystem: {{rootdirectory: {directory / 'storage'}}}, delete: {{enabled: true}}}}",
        f"http: {{addr: '127.0.0.1:{port}'}}",
    ]
    if credentials:
        htpasswd = run("htpasswd", "-Bbn", *credentials)
        (directory / "htpasswd").write_text(htpasswd)
        config.append(f"auth: {{htpasswd: {{realm: sdrun-test, path: {directory / 'htpasswd'}}}}}")
    (directory / "config.yml").write_text("\n".join(config) + "\n")
    log = (directory / "registry.log").open("wb")
    process = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")], stdout=log, stderr=log)
    try:
        _wait_for(f"http://127.0.0.1:{port}/v2/", process)
        yield LocalRegistry(f"127.0.0.1:{port}", directory / "storage", credentials, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"docker-registry exited {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
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
