"""Images and pods together: creating a pod from an image, and which images and trees pods use."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TextIO

from sdrun.errors import NotFound, SdrunError
from sdrun.image.config import apply_image_config, exposed_ports
from sdrun.image.oci import Platform, describe_platform
from sdrun.image.podimage import PodImage, read_pod_image, write_pod_image
from sdrun.image.pullsettings import PullSettings
from sdrun.image.store import Image, ImageStore
from sdrun.image.transfer import PullOptions, find_or_pull
from sdrun.paths import Paths
from sdrun.pod import Pod, PodStore, load_pod
from sdrun.spec import PodSpec

# overlayfs takes its options in one page; past this many bytes of lowerdir paths the mount fails.
MAX_LOWERDIR_OPTION = 3800


def create_image_pod(
    paths: Paths,
    pods: PodStore,
    spec: PodSpec,
    progress: TextIO | None,
    pull: PullSettings | None = None,
    pod_uuid: str | None = None,
) -> Pod:
    """Find (or pull) spec.image, fold its config into the spec, create the pod and record its trees.
    The store's shared lock is held from the pull's end: `image gc` cannot take the trees from under the
    new pod. Not during the pull itself, so that a failed one can take away what it brought."""
    assert spec.image is not None
    pull = pull or PullSettings()
    options = PullOptions(
        platform=Platform.parse(pull.platform) if pull.platform else None,
        tls_verify=pull.tls_verify,
        progress=progress,
        verify=pull.verify,
        signature_policy=pull.signature_policy,
        registries_d=pull.registries_d,
    )
    store = ImageStore(paths.images)
    pulled = find_or_pull(paths, spec.image, options)
    with store.shared():
        image = store.load(pulled.digest, pulled.names, pulled.index_digest)
        if not store.is_complete(image):  # an unnamed image (pulled by digest) that gc took meanwhile
            raise SdrunError(f"image {spec.image} was removed by `image gc` while the pod was made: run it again")
        merged, record = _image_pod_parts(store, spec, image, options.platform)
        pod = pods.create(merged, pod_uuid)
        try:
            write_pod_image(pod.dir, record)
        except BaseException:
            pods.remove(pod)
            raise
    return pod


def stored_image_parts(paths: Paths, spec: PodSpec) -> tuple[PodSpec, PodImage]:
    """For planning an installed pod's unit: the spec with its stored image's config folded in, and
    the image record a pod of it gets. The image must be in the store: a generator cannot pull."""
    assert spec.image is not None
    store = ImageStore(paths.images)
    with store.shared():
        image = store.find(spec.image)
        if image is None:
            raise NotFound(f"image {spec.image} is not in the image store", hint=f"sdrun image pull {spec.image}")
        return _image_pod_parts(store, spec, image, None)


def _image_pod_parts(
    store: ImageStore, spec: PodSpec, image: Image, platform: Platform | None
) -> tuple[PodSpec, PodImage]:
    """platform: the one the command line asked for (find_or_pull has made sure the image is of it)."""
    assert spec.image is not None
    if platform is None:
        _check_host_platform(image, spec.image)
    lowers = [str(tree) for tree in store.trees_of(image)]
    if sum(len(lower) + 1 for lower in lowers) > MAX_LOWERDIR_OPTION:
        raise SdrunError(f"{spec.image} has too many layers ({len(lowers)}) for one overlayfs mount")
    name = image.names[0] if image.names else spec.image
    return apply_image_config(spec, image.config), PodImage(image.digest, name, lowers, exposed_ports(image.config))


def _check_host_platform(image: Image, what: str) -> None:
    """Refuse an image of another OS or architecture than the host's. `image pull --platform` stores
    one under the plain tag, and its app would then fail with an exec format error at best, or run
    under qemu-user's binfmt handler without a word. --platform says that is meant. A config that
    names no os or architecture (OCI requires both; old tools left them out) is given the benefit."""
    host = Platform.host()
    wanted = {"os": host.os, "architecture": host.architecture}
    if any(image.config.get(key) not in (None, value) for key, value in wanted.items()):
        found = describe_platform(image.config)
        raise SdrunError(
            f"image {what} is for {found}, not this host's {host}",
            hint=f"'sdrun image pull {what}' gets the host's, if any; 'run --platform {found}' runs this one",
        )


class Usage:
    """Which pods use which image, and every tree some pod stacks."""

    def __init__(self) -> None:
        self.pods_by_image: dict[str, list[str]] = {}  # digest -> pod names
        self.trees: set[Path] = set()


def usage(paths: Paths) -> Usage:
    found = Usage()
    entries = []
    for directory in (paths.pods, paths.apps):  # the apps of pods of several apps (sdrun.pods) too
        with contextlib.suppress(FileNotFoundError):
            entries += list(os.scandir(directory))
    for entry in entries:
        record = read_pod_image(entry.path)
        if record is None:
            continue
        try:
            pod_name = load_pod(Path(entry.path)).name
        except (SdrunError, ValueError, KeyError):
            pod_name = entry.name  # half-made or damaged: its trees count as used all the same
        found.pods_by_image.setdefault(record.digest, []).append(pod_name)
        found.trees |= {Path(lower) for lower in record.lowers}
    return found
