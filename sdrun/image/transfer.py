"""Copying an image from any source into the store: pull, import, and `run IMAGE`'s pull-if-absent.

The manifest is chosen and admitted (digest pins, signatures) before the store is touched.
Order of writes (the crash-safety argument, see sdrun.image.store): config blob, then
each layer's blob and tree (in parallel), then the manifest blob, then the name in
index.json. Blobs and trees already in the store are never fetched again.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

from sdrun.errors import SdrunError
from sdrun.image import oci
from sdrun.image.auth import auth_files, credentials_for
from sdrun.image.policy import PolicyError, load_policy
from sdrun.image.reference import FileReference, RegistryReference, parse_reference
from sdrun.image.registry import RegistryError
from sdrun.image.sources import (
    DockerArchiveSource,
    ImageSource,
    OciArchiveSource,
    OciLayoutSource,
    RegistrySource,
    RootfsTarSource,
)
from sdrun.image.store import Image, ImageStore, TamperedBlob, digest_of
from sdrun.paths import Paths

if TYPE_CHECKING:
    from sdrun.image.trustpolicy import TrustPolicy

PARALLEL_LAYERS = 4
BLOB_ATTEMPTS = 3


class PullOptions(NamedTuple):
    platform: oci.Platform | None = None  # None: the host's, and no check of a single-platform image
    tls_verify: bool | None = None  # None: verify, except for registries on loopback
    progress: TextIO | None = None  # where progress goes, when it is a terminal
    verify: bool = False  # refuse a registry image that no digest pins (sdrun.image.policy)
    signature_policy: Path | None = None  # containers-policy.json(5); None: /etc/containers/policy.json, if any
    registries_d: Path | None = None  # where signatures are (registries.d(5)); None: /etc/containers/registries.d


class ProgressLine:
    """One line on a terminal, redrawn at most 10 times a second; silent when not a terminal."""

    def __init__(self, stream: TextIO | None, title: str, total: int) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.title = title
        self.total = total
        self.done = 0
        self.layers = ""
        self.lock = threading.Lock()
        self.drawn = 0.0

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
            if self.stream and time.monotonic() - self.drawn > 0.1:
                self._draw()

    def status(self, text: str) -> None:
        with self.lock:
            self.layers = text
            if self.stream:
                self._draw()

    def _draw(self) -> None:
        assert self.stream is not None
        self.drawn = time.monotonic()
        width = 30
        filled = width * min(self.done, self.total) // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        megabytes = f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        self.stream.write(f"\r{self.title} [{bar}] {megabytes} {self.layers}\x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def source_for(paths: Paths, text: str, *, tls_verify: bool | None) -> ImageSource:
    reference = parse_reference(text)
    if isinstance(reference, RegistryReference):
        credentials = credentials_for(reference.host, auth_files(paths.auth_file))
        return RegistrySource(reference, tls_verify=tls_verify, credentials=credentials)
    assert isinstance(reference, FileReference)
    if reference.transport == "oci":
        return OciLayoutSource(reference)
    if reference.transport == "oci-archive":
        return OciArchiveSource(reference)
    return DockerArchiveSource(reference)


def rootfs_source(path: Path, platform: oci.Platform | None) -> ImageSource:
    return RootfsTarSource(path, platform or oci.Platform.host())


# Called with the digests the source sent (an index's, then the manifest's; or the manifest's) before
# anything else is fetched: raises to refuse the image.
Admission = Callable[[tuple[str, ...]], None]


def copy_image(
    store: ImageStore,
    source: ImageSource,
    names: tuple[str, ...],
    options: PullOptions,
    admit: Admission | None = None,
) -> Image:
    """Copy the image the source names (its platform's, from an index) into the store, then name it.
    The manifest is chosen, and admitted, before the store is touched: a refusal leaves it as it was.
    A copy that fails takes away the blobs and trees it brought."""
    chosen = _chosen_manifest(source, options, admit)
    brought = Brought(set(), set())
    try:
        with store.shared():
            return _copy_image(store, source, names, options, chosen, brought)
    except BaseException:
        if brought.blobs or brought.diff_ids:
            store.discard(brought.blobs, brought.diff_ids)
        raise


class Brought(NamedTuple):
    """What a copy has put, or begun to put, into the store: blob digests, layer diff_ids."""

    blobs: set[str]
    diff_ids: set[str]


class Chosen(NamedTuple):
    raw: bytes  # the manifest, as the source sent it
    media_type: str
    digest: str
    index_digest: str | None  # of the index it was chosen from


def _chosen_manifest(source: ImageSource, options: PullOptions, admit: Admission | None) -> Chosen:
    """The manifest to copy (the platform's, from an index), admitted by the policies."""
    raw, media_type = source.top()
    digest, index_digest = digest_of(raw), None
    if media_type in oci.INDEX_TYPES:
        entry = oci.select_manifest(
            oci.parse_index(raw, digest), options.platform or oci.Platform.host(), source.description
        )
        index_digest = digest
        if admit:
            admit((index_digest, entry.digest))
        raw, media_type = source.manifest_by_digest(entry.digest)
        digest = digest_of(raw)
        if digest != entry.digest:
            raise TamperedBlob(f"{source.description}: manifest {entry.digest} arrived with digest {digest}")
    elif admit:
        admit((digest,))
    return Chosen(raw, media_type, digest, index_digest)


def _copy_image(
    store: ImageStore,
    source: ImageSource,
    names: tuple[str, ...],
    options: PullOptions,
    chosen: Chosen,
    brought: Brought,
) -> Image:
    raw, digest, index_digest = chosen.raw, chosen.digest, chosen.index_digest
    manifest = oci.parse_manifest(raw, digest, chosen.media_type)
    if not store.has_blob(digest) or not _complete(store, digest):
        _copy_content(store, source, manifest, options, brought)
        store.put_bytes(raw)  # the manifest last: it only exists once everything it names does
    for name in names:
        store.tag(manifest, name, index_digest)
    return store.load(digest, names, index_digest)


def _complete(store: ImageStore, digest: str) -> bool:
    try:
        return store.is_complete(store.load(digest))
    except SdrunError:
        return False


def _copy_content(
    store: ImageStore, source: ImageSource, manifest: oci.Manifest, options: PullOptions, brought: Brought
) -> None:
    _fetch_blob(store, source, manifest.config, None, brought)
    config = oci.load_json(store.read_blob(manifest.config.digest), f"config of {manifest.digest}")
    _check_platform(config, options.platform, source.description)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(manifest.layers):
        raise oci.ImageFormatError(
            f"{source.description}: the config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers"
        )
    missing = [layer.size for layer in manifest.layers if not store.has_blob(layer.digest)]
    progress = ProgressLine(options.progress, f"pulling {source.description}", sum(missing))
    rendered = [0]

    def copy_layer(pair: tuple[oci.Descriptor, str]) -> None:
        layer, diff_id = pair
        _fetch_blob(store, source, layer, progress.add, brought)
        if not store.has_tree(diff_id):
            brought.diff_ids.add(diff_id)
            store.render_tree(diff_id, layer.digest)
        rendered[0] += 1
        progress.status(f"{rendered[0]}/{len(manifest.layers)} layers")

    with ThreadPoolExecutor(max_workers=PARALLEL_LAYERS) as pool:
        for result in [pool.submit(copy_layer, pair) for pair in zip(manifest.layers, diff_ids, strict=True)]:
            result.result()  # the first failure propagates; the others still finish (or fail) first
    progress.finish()


def _fetch_blob(
    store: ImageStore,
    source: ImageSource,
    blob: oci.Descriptor,
    progress: Callable[[int], None] | None,
    brought: Brought,
) -> None:
    """A blob into the store, retrying a broken transfer from where it stopped."""
    for attempt in range(BLOB_ATTEMPTS):
        if store.has_blob(blob.digest):
            return
        brought.blobs.add(blob.digest)
        try:
            store.put_blob(
                blob.digest,
                blob.size,
                lambda offset: source.open_blob(blob.digest, offset),
                source=source.description,
                progress=progress,
            )
            return
        except (OSError, http.client.HTTPException) as error:
            if attempt == BLOB_ATTEMPTS - 1:
                raise RegistryError(f"{source.description}: blob {blob.digest} failed: {error}") from None
            time.sleep(0.5 * (attempt + 1))


def _check_platform(config: object, wanted: oci.Platform | None, description: str) -> None:
    if wanted is None or not isinstance(config, dict):
        return
    if not wanted.matches({key: config.get(key) for key in ("os", "architecture", "variant")}):
        found = oci.describe_platform(config)
        raise SdrunError(f"{description} is for {found}, not {wanted}")


def pull(paths: Paths, text: str, options: PullOptions) -> Image:
    store = ImageStore(paths.images)
    source = source_for(paths, text, tls_verify=options.tls_verify)
    return copy_image(store, source, source.names(), options, _admission(paths, source, options))


def _admission(paths: Paths, source: ImageSource, options: PullOptions) -> Admission | None:
    """The policies' checks of a pull: now, what the registry need not be asked for (the registries
    trusted, a signature policy's scope that rejects); then, once the registry has sent the digests,
    the pins and the signatures of the chosen manifest, before any blob is fetched."""
    from sdrun.image.trustpolicy import load_trust_policy  # not for `run` of a stored image: not on its path

    trust = load_trust_policy(options.signature_policy)
    if not isinstance(source, RegistrySource):
        if options.verify:
            raise PolicyError(f"--verify: {source.description} is not from a registry: no policy covers it")
        if trust is not None:
            check_file_source_trust(trust, source)
        return None
    policy = load_policy(paths.policy_file)
    reference = source.reference
    policy.check_registry(reference)
    image_trust = None
    if trust is not None:
        from sdrun.image.signatures import ImageTrust

        image_trust = ImageTrust(trust, options.registries_d, reference, source.registry)
        image_trust.check_scope()

    def admit(digests: tuple[str, ...]) -> None:
        policy.check_digests(reference, digests, verify=options.verify)
        if image_trust is not None:
            image_trust.check_manifest(digests[-1])  # an index's platform manifest: its own signatures

    return admit


def import_admission(source: ImageSource, options: PullOptions) -> None:
    """`image import`: the signature policy's scope of the file transport must accept anything
    (an OCI layout or archive carries no signature sdrun reads; a plain rootfs tarball is no transport
    of containers/image, and no policy covers it)."""
    if isinstance(source, OciLayoutSource | DockerArchiveSource):  # (OciArchiveSource is an OciLayoutSource)
        from sdrun.image.trustpolicy import load_trust_policy

        trust = load_trust_policy(options.signature_policy)
        if trust is not None:
            check_file_source_trust(trust, source)


def check_file_source_trust(trust: TrustPolicy, source: ImageSource) -> None:
    from sdrun.image.signatures import check_file_source
    from sdrun.image.trustpolicy import path_namespaces

    transport, _, path = source.description.partition(":")
    if transport == "docker-archive":
        check_file_source(trust, transport, "", [], source.description)
        return
    resolved = str(Path(path).resolve())
    check_file_source(trust, transport, resolved, path_namespaces(resolved), source.description)


def find_or_pull(paths: Paths, text: str, options: PullOptions) -> Image:
    """`run IMAGE`: the stored image of that name or digest, else a pull (a transport reference always pulls,
    which costs only the manifest's round trip when nothing changed)."""
    if not text.startswith(("oci:", "oci-archive:", "docker-archive:", "docker://")):
        image = ImageStore(paths.images).find(text)
        if image is not None and (options.platform is None or options.platform.matches(image.config)):
            return image  # (one of another platform than asked for is pulled again, as podman does)
    if options.progress is not None and options.progress.isatty():
        options.progress.write(f"sdrun: {text} is not in the image store: pulling it\n")
    return pull(paths, text, options)


def default_progress() -> TextIO | None:
    return sys.stderr if os.isatty(2) else None
