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


def image_lowers(pod: Pod) -> list[str]:
    """An image pod's layer trees, topmost first, each checked to be completely rendered."""
    record = read_pod_image(pod.dir)
    if record is None or not record.lowers:
        raise SdrunError(f"pod {pod.name} has no image record ({Paths.pod_image(pod.dir)})")
    for lower in record.lowers:
        if not os.path.exists(os.path.join(os.path.dirname(lower), "rendered")):
            raise SdrunError(f"layer tree {lower} of image {record.digest} is missing or incomplete")
    return record.lowers


def overlay_options(lowers: list[str], upper: str | None = None, work: str | None = None) -> str:
    """overlayfs mount options: lowerdirs topmost first; read-only without an upper (and work) dir."""
    options = "lowerdir=" + ":".join(_escape(lower) for lower in lowers)
    if upper is not None and work is not None:
        options += f",upperdir={_escape(upper)},workdir={_escape(work)}"
    return options


def pod_overlay(pod: Pod) -> tuple[Path, str]:
    """Where an image pod's root goes and its overlay options (creating the pod's upper and work dirs)."""
    lowers = image_lowers(pod)
    scratch = Paths.stage1_dir(pod.dir)
    upper, work, target = scratch / UPPER, scratch / WORK, Paths.pod_rootfs(pod.dir)
    for directory in (scratch, upper, work, target):
        directory.mkdir(mode=0o755, exist_ok=True)
    return target, overlay_options(lowers, str(upper), str(work))


def mount_pod_rootfs(pod: Pod) -> Path:
    if pod.spec.rootfs:
        return Path(pod.spec.rootfs)
    target, options = pod_overlay(pod)
    sc.mount("overlay", target, "overlay", 0, options)
    return target


# With --read-only, where the app may still write, as podman's --read-only-tmpfs (its default) gives
# it: PATH:OPTIONS as --tmpfs takes them (executable, as podman's; nosuid and nodev all the same).
READ_ONLY_TMPFS = (("/tmp", "exec,mode=1777"), ("/var/tmp", "exec,mode=1777"), ("/run", "exec,mode=755"))


def read_only_tmpfs(pod: Pod) -> tuple[str, ...]:
    """The tmpfs a --read-only pod gets on /tmp, /var/tmp and /run: each unless a volume or a
    --tmpfs of its own is there. A stage1 mounts them before the volumes, which may go below."""
    spec = pod.spec
    if not spec.isolation.read_only:
        return ()
    taken = {tmpfs.partition(":")[0] for tmpfs in spec.isolation.tmpfs} | {volume.target for volume in spec.app.volumes}
    return tuple(f"{path}:{options}" for path, options in READ_ONLY_TMPFS if path not in taken)
