"""Every on-disk path sdrun uses, built in one place.

<root>/pods/<uuid>/            one directory per pod (see sdrun.pod)
<root>/pods/<uuid>/pod.json    the pod manifest: the spec as JSON
<root>/pods/<uuid>/lock        flock(2) guarding the directory
<root>/pods/<uuid>/exit        the app's exit record, written by the unit's ExecStopPost
<root>/pods/<uuid>/health      an installed pod's last health check: its exit status and time
<root>/pods/<uuid>/image       an image pod's image and layer trees (sdrun.image.podimage)
<root>/pods/<uuid>/rootfs      an image pod's overlayfs root, mounted only inside its stage1's namespace
<root>/names/<name>            symlink to ../pods/<uuid>; its creation reserves the name
<root>/images/                 the OCI image store
<root>/trustedkeys/            keys `image trust add` copied, which the signature policy names by path

Host-wide, shared by every root:
/run/sdrun/python/<key>        a sealed, read-only view of an interpreter prefix (stage1.sealed)
/run/sdrun/python/.empty       the views' second lower layer (overlayfs wants two without an upper)
/run/sdrun/python/.lock        flock(2) held while a view is mounted
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError

DEFAULT_ROOT = Path("/var/lib/sdrun")
SEALED_INTERPRETERS = Path("/run/sdrun/python")  # on /run: gone at reboot, as the mounts in it
# No view is named so: stage1.sealed.prefix_key ends each name with -<crc32>.
SEALED_EMPTY_LAYER = SEALED_INTERPRETERS / ".empty"
SEALED_LOCK = SEALED_INTERPRETERS / ".lock"


def sealed_interpreter(prefix_key: str) -> Path:
    """The mount point of the sealed view of the interpreter prefix that prefix_key names."""
    return SEALED_INTERPRETERS / prefix_key


class Paths(NamedTuple):
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None) -> Paths:
        """The paths of the root the user chose (--root, $SDRUN_ROOT, the default), once it is known
        to be a directory or absent (made when first needed): a file there would fail every command
        later, as a bare NotADirectoryError."""
        chosen = Path(root or os.environ.get("SDRUN_ROOT") or DEFAULT_ROOT).absolute()
        try:
            if stat.S_ISDIR(chosen.stat().st_mode):
                return cls(chosen)
        except FileNotFoundError:
            return cls(chosen)
        except NotADirectoryError:  # a file on the way to it
            pass
        raise SdrunError(f"root '{chosen}' is not a directory", hint="--root DIR or $SDRUN_ROOT: sdrun's state")

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def names(self) -> Path:
        return self.root / "names"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def trusted_keys(self) -> Path:
        return self.root / "trustedkeys"

    def pod_dir(self, uuid: str) -> Path:
        return self.pods / uuid

    @staticmethod
    def root_of(pod_dir: Path) -> Path:
        """The sdrun root a pod directory (<root>/pods/<uuid>) belongs to."""
        return pod_dir.parent.parent

    def name_link(self, name: str) -> Path:
        return self.names / name

    @staticmethod
    def manifest(pod_dir: Path) -> Path:
        return pod_dir / "pod.json"

    @staticmethod
    def lock(pod_dir: Path) -> Path:
        return pod_dir / "lock"

    @staticmethod
    def exit_record(pod_dir: Path) -> Path:
        return pod_dir / "exit"

    @staticmethod
    def health_record(pod_dir: Path) -> Path:
        return pod_dir / "health"

    @staticmethod
    def pod_image(pod_dir: str | os.PathLike[str]) -> Path:
        return Path(pod_dir) / "image"

    @staticmethod
    def pod_rootfs(pod_dir: str | os.PathLike[str]) -> Path:
        return Path(pod_dir) / "rootfs"

    @staticmethod
    def stage1_dir(pod_dir: Path) -> Path:
        """Scratch space owned by the pod's stage1 (mount points, overlay dirs)."""
        return pod_dir / "stage1"
