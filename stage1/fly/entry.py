"""The fly stage1's entry inside the unit: carry out the plan stage0 wrote, then become the app.

It imports only what it needs (marshal, ctypes through sdrun.linux.syscalls,
socket, the in-root mount helpers): every millisecond here delays every
container start.
"""

from __future__ import annotations

import marshal
import os

from sdrun.errors import SdrunError, describe
from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import bind_in_root
from stage1 import entry_pod_dir, fail
from stage1.process import Identity, SystemdNotifier, exec_as

# Not `typing.TYPE_CHECKING`: importing typing (and the re it pulls in) costs the
# in-unit entry ~5 ms; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from stage1.app import ResolvedApp

# In the pod's stage1 directory. marshal, not JSON: stage0 and this entry run the same
# interpreter (sys.executable), and marshal is built in, where json would import re.
PLAN_FILE = "fly.plan"
HOST_API_FILESYSTEMS = ("/proc", "/sys", "/dev")


def read_plan(path: str) -> dict[str, Any]:
    with open(path, "rb") as stream:
        plan: dict[str, Any] = marshal.load(stream)
    return plan


def app_fields(app: ResolvedApp) -> dict[str, Any]:
    """A resolved app as plan entries."""
    credentials = app.credentials
    return {
        "executable": app.executable,
        "argv": list(app.argv),
        "env": app.env,
        "workdir": app.workdir,
        "uid": credentials.uid,
        "gid": credentials.gid,
        "groups": list(credentials.groups),
    }


def _mount_image_root(pod_dir: str) -> dict[str, Any]:
    """An image pod: mount its overlay (we are in our own mount namespace), resolve the app in it."""
    from pathlib import Path

    from sdrun.pod import load_pod
    from stage1.app import resolve_app
    from stage1.rootfs import mount_pod_rootfs

    pod = load_pod(Path(pod_dir))
    rootfs = mount_pod_rootfs(pod)
    return {"rootfs": str(rootfs), **app_fields(resolve_app(rootfs, pod.spec.app))}


def become_app(plan: dict[str, Any]) -> NoReturn:
    notifier = SystemdNotifier()  # connect before the chroot hides the socket
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # host mounts still reach us; ours stay here
    if plan["rootfs"] is None:
        plan = plan | _mount_image_root(plan["pod_dir"])
    rootfs = plan["rootfs"]
    for source, target, read_only in plan["binds"]:
        bind_in_root(source, rootfs, target, read_only)
    os.chroot(rootfs)
    notifier.notify("READY=1")
    identity = Identity(plan["uid"], plan["gid"], plan["groups"])
    exec_as(identity, plan["workdir"], plan["executable"], plan["argv"], plan["env"])


def main(argv: list[str]) -> NoReturn:
    pod_dir = entry_pod_dir(argv)
    try:
        become_app(read_plan(os.path.join(pod_dir, "stage1", PLAN_FILE)))
    except (SdrunError, OSError) as error:
        fail(describe(error))
    except (ValueError, EOFError, TypeError, KeyError) as error:
        fail(f"{PLAN_FILE} of {pod_dir} is damaged: {error}")
