"""The pod's root filesystem, as every stage1 entry mounts it inside its private mount namespace.

    mount_pod_rootfs(pod) -> Path

An image pod gets an overlayfs: the image's layer trees (shared, read-only, one copy on
the host for all pods) as lowerdirs, topmost first, and an upper and work directory of
its own in its stage1 directory, so its writes never reach another pod. It is mounted
at Paths.pod_rootfs(pod.dir), visible only in the caller's mount namespace: the caller
must have unshared one (and made / a slave) first. A --rootfs pod's root is its
directory itself. This module stays light: it runs in every unit before the app.
"""

from __future__ import annotations

import os
from pathlib import Path  # sdrun.paths imports it anyway

from sdrun.errors import SdrunError
from sdrun.image.podimage import read_pod_image
from sdrun.linux import syscalls as sc
from sdrun.paths import Paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sdrun.pod import Pod

UPPER = "rootfs-upper"
WORK = "rootfs-work"


def _escape(path: str) -> str:
    """overlayfs splits its options at ',' and lowerdir at ':'; a backslash escapes either."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def mount_pod_rootfs(pod: Pod) -> Path:
    if pod.spec.rootfs:
        return Path(pod.spec.rootfs)
    record = read_pod_image(pod.dir)
    if record is None or not record.lowers:
        raise SdrunError(f"pod {pod.name} has no image record ({Paths.pod_image(pod.dir)})")
    for lower in record.lowers:
        if not os.path.exists(os.path.join(os.path.dirname(lower), "rendered")):
            raise SdrunError(f"layer tree {lower} of image {record.digest} is missing or incomplete")
    scratch = Paths.stage1_dir(pod.dir)
    upper, work, target = scratch / UPPER, scratch / WORK, Paths.pod_rootfs(pod.dir)
    for directory in (scratch, upper, work, target):
        directory.mkdir(mode=0o755, exist_ok=True)
    lowerdir = ":".join(_escape(lower) for lower in record.lowers)
    options = f"lowerdir={lowerdir},upperdir={_escape(str(upper))},workdir={_escape(str(work))}"
    sc.mount("overlay", target, "overlay", 0, options)
    return target
