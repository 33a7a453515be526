"""The image a pod runs, recorded in its directory (Paths.pod_image): which image, which layer trees.

One `KEY VALUE` line each, so the in-unit entry reads it without importing json:

    digest sha256:...        the image manifest the pod was created from
    name 127.0.0.1:5000/app:1
    lower /var/lib/sdrun/images/trees/<hex>/root     overlayfs lowerdirs, topmost first
    port 80/tcp              the image's ExposedPorts, recorded for `sdrun status`

`image rm` refuses an image a pod records; `image gc` keeps every tree a pod records.
"""

from __future__ import annotations

import os

from sdrun.paths import Paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class PodImage:
    __slots__ = ("digest", "lowers", "name", "ports")

    def __init__(self, digest: str, name: str, lowers: list[str], ports: list[str]) -> None:
        self.digest = digest
        self.name = name
        self.lowers = lowers
        self.ports = ports

    def render(self) -> str:
        lines = [f"digest {self.digest}", f"name {self.name}"]
        lines += [f"lower {lower}" for lower in self.lowers] + [f"port {port}" for port in self.ports]
        return "\n".join(lines) + "\n"


def read_pod_image(pod_dir: str | os.PathLike[str]) -> PodImage | None:
    """The pod's image record; None for a --rootfs pod."""
    try:
        with open(Paths.pod_image(pod_dir), encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        return None
    record = PodImage("", "", [], [])
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "digest":
            record.digest = value
        elif key == "name":
            record.name = value
        elif key == "lower":
            record.lowers.append(value)
        elif key == "port":
            record.ports.append(value)
    return record


def write_pod_image(pod_dir: Path, record: PodImage) -> None:
    from sdrun.files import write_atomically

    write_atomically(Paths.pod_image(pod_dir), record.render())
