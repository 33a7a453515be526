"""The fly stage1's entry inside the unit: carry out the plan stage0 wrote, then become the app.

It imports only what it needs (marshal, ctypes through sdrun.linux.syscalls,
socket, the in-root mount helpers): every millisecond here delays every
container start. stage0 resolved the app, for image pods too.
"""

from __future__ import annotations

import marshal
import os

from sdrun.errors import SdrunError, describe
from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import bind_in_root
from stage1 import entry_pod_dir, fail
from stage1.process import SystemdNotifier, exec_planned

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

# In the pod's stage1 directory. marshal, not JSON: stage0 and this entry run the same
# interpreter (sys.executable), and marshal is built in, where json would import re.
PLAN_FILE = "fly.plan"
HOST_API_FILESYSTEMS = ("/proc", "/sys", "/dev")


def read_plan(path: str) -> dict[str, Any]:
    with open(path, "rb") as stream:
        plan: dict[str, Any] = marshal.load(stream)
    return plan


def become_app(plan: dict[str, Any]) -> NoReturn:
    notifier = SystemdNotifier()  # connect before the chroot hides the socket
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # host mounts still reach us; ours stay here
    rootfs = plan["rootfs"]
    if plan["rootfs_overlay"] is not None:  # an image pod: its layer trees and its own upper layer
        rootfs, options = plan["rootfs_overlay"]
        sc.mount("overlay", rootfs, "overlay", 0, options)
    for source, target, read_only in plan["binds"]:
        bind_in_root(source, rootfs, target, read_only)
    os.chroot(rootfs)
    notifier.notify("READY=1")
    exec_planned(plan["app"])


def main(argv: list[str]) -> NoReturn:
    pod_dir = entry_pod_dir(argv)
    try:
        become_app(read_plan(os.path.join(pod_dir, "stage1", PLAN_FILE)))
    except (SdrunError, OSError) as error:
        fail(describe(error))
    except (ValueError, EOFError, TypeError, KeyError) as error:
        fail(f"{PLAN_FILE} of {pod_dir} is damaged: {error}")
