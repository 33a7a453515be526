"""The fly stage1's entry inside the unit: carry out the plan stage0 wrote, then become the app.

It imports only what it needs (marshal, ctypes through sdrun.linux.syscalls,
socket, the in-root mount helpers): every millisecond here delays every
container start. stage0 resolved the app, for image pods too.
"""

from __future__ import annotations

import os

from sdrun.errors import SdrunError, describe
from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import bind_in_root
from stage1 import entry_pod_dir, fail, read_plan
from stage1.process import SystemdNotifier, exec_planned

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from stage1 import EntryPlan
    from stage1.process import AppPlan

    class Plan(EntryPlan):
        """stage1/fly.plan (backend.write_plan)."""

        rootfs: str | None  # None: an image pod, whose root is rootfs_overlay
        rootfs_overlay: tuple[str, str] | None  # (where, overlayfs options)
        app: AppPlan
        binds: list[tuple[str, str, bool]]  # (host source, target in the root, read-only)


# In the pod's stage1 directory. marshal, not JSON: stage0 and this entry run the same
# interpreter (sys.executable), and marshal is built in, where json would import re.
PLAN_FILE = "fly.plan"
HOST_API_FILESYSTEMS = ("/proc", "/sys", "/dev")


def become_app(plan: Plan) -> NoReturn:
    notifier = SystemdNotifier()  # connect before the chroot hides the socket
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # host mounts still reach us; ours stay here
    rootfs = plan["rootfs"]
    if plan["rootfs_overlay"] is not None:  # an image pod: its layer trees and its own upper layer
        rootfs, options = plan["rootfs_overlay"]
        sc.mount("overlay", rootfs, "overlay", 0, options)
    assert rootfs is not None  # the planner gives one or the other
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
    except (ValueError, TypeError, KeyError) as error:
        fail(f"{PLAN_FILE} of {pod_dir} is damaged: {error}")
