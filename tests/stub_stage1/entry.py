"""The stub stage1's entry: a private mount namespace, the host's /proc bound in, chroot, READY=1, exec.

Light, as the contract asks of an entry: the standard library's light modules and the modules
docs/stage1.md lists for entries (stage1, stage1.process, sdrun.linux.*), nothing else.
"""

from __future__ import annotations

import os

from sdrun.errors import SdrunError, describe
from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import bind_in_root
from stage1 import entry_pod_dir, fail, read_plan
from stage1.process import SystemdNotifier, exec_planned

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from stage1 import EntryPlan
    from stage1.process import AppPlan

    class Plan(EntryPlan):
        rootfs: str
        app: AppPlan


PLAN_FILE = "stub.plan"  # in the pod's stage1 directory


def main(argv: list[str]) -> NoReturn:
    pod_dir = entry_pod_dir(argv)
    plan: Plan = read_plan(os.path.join(pod_dir, "stage1", PLAN_FILE))
    try:
        notifier = SystemdNotifier()  # before the chroot hides the socket
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # what we mount stays out of the host's table
        bind_in_root("/proc", plan["rootfs"], "/proc")
        os.chroot(plan["rootfs"])
        notifier.notify("READY=1")
        exec_planned(plan["app"])
    except (SdrunError, OSError) as error:
        fail(describe(error))
