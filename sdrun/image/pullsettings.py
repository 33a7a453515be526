"""How `sdrun run` pulls an image pod's image when the store lacks it: plain data, cheap to import
(a --rootfs run never loads the image modules)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class PullSettings(NamedTuple):
    """The command line's side of sdrun.image.transfer.PullOptions."""

    platform: str | None = None  # OS/ARCH[/VARIANT]; a stored image of another platform is pulled again
    tls_verify: bool | None = None
    verify: bool = False
    signature_policy: Path | None = None  # containers-policy.json(5) [/etc/containers/policy.json]
    registries_d: Path | None = None  # registries.d(5) [/etc/containers/registries.d]
