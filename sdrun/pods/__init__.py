"""Pods of several apps, as rkt had them: a slice, namespaces held by files, one service per app.

`sdrun pod create NAME` makes the pod with no app: its slice (machine-sdrun\\x2dNAME.slice, in
machine.slice, with the pod's --memory, --cpus and --pids-limit), its network namespace (as
sdrun.net makes one for a one-app pod: /run/netns/sdrun-<uuid>, with its veth, lease and
published ports; for --net none one of its own with loopback only), and its IPC and UTS
namespaces (the hostname set), each bind-mounted on a file under /run/sdrun/pods/<uuid>, so that
no process holds them. `sdrun app add POD ... --name APP` makes an app: a pod directory of its
own (its spec, rootfs layer, exit record), whose service sdrun-POD-APP.service runs in the pod's
slice and whose namespace stage1 joins the pod's network, IPC and UTS namespaces
(PodSpec.pod_namespaces) with mount, PID and cgroup namespaces of its own.

On disk (sdrun.pod's PodStore, with directories of their own, so that `sdrun list` and the
one-app `gc` see neither): <root>/pod-groups/<uuid>/ (pod.json: the pod's settings, as a PodSpec)
with names in <root>/pod-group-names/, and <root>/apps/<uuid>/ (each app's pod.json names its pod's
UUID in its label sdrun.pod) with names POD-APP in <root>/app-names/. A pod or app is complete
once its `ready` file is written, last: `sdrun gc` takes apart what has none and whose lock
nobody holds (a `pod create` or `app add` killed midway).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sdrun.paths import POD_NAMESPACES_DIR, Paths
from sdrun.pod import Pod, PodStore

POD_LABEL = "sdrun.pod"  # an app's: its pod's UUID
APP_LABEL = "sdrun.app"  # an app's: its name in the pod
READY = "ready"  # written last, in a pod's or app's directory: complete
NAMESPACES_DIR = POD_NAMESPACES_DIR
SLICE_PATTERN = "machine-sdrun\\x2d*.slice"


class GroupPaths(Paths):
    """The pods of several apps: a PodStore of their own (crash-safe creation, names, locks)."""

    @property
    def pods(self) -> Path:
        return self.pod_groups

    @property
    def names(self) -> Path:
        return self.pod_group_names


class AppPaths(GroupPaths):
    """The apps of those pods, each a pod directory (as a one-app pod's) of this store."""

    @property
    def pods(self) -> Path:
        return self.apps

    @property
    def names(self) -> Path:
        return self.app_names


class Stores(NamedTuple):
    groups: PodStore
    apps: PodStore

    @classmethod
    def of(cls, paths: Paths) -> Stores:
        return cls(PodStore(GroupPaths(paths.root)), PodStore(AppPaths(paths.root)))


def slice_unit(pod_name: str) -> str:
    """machine-sdrun\\x2dNAME.slice: a slice's parent is named by its name's dashes, so the pod's
    `sdrun-NAME` is escaped to stay one level, right under machine.slice."""
    return f"machine-{escape_unit_part(f'sdrun-{pod_name}')}.slice"


def escape_unit_part(text: str) -> str:
    return text.replace("\\", "\\x5c").replace("-", "\\x2d")


def app_unit_name(pod_name: str, app: str) -> str:
    """The app's pod (its directory's) name, whose unit is sdrun-POD-APP.service."""
    return f"{pod_name}-{app}"


def namespaces_dir(pod_uuid: str) -> Path:
    return NAMESPACES_DIR / pod_uuid


def is_ready(pod: Pod) -> bool:
    return (pod.dir / READY).exists()


def mark_ready(pod: Pod) -> None:
    (pod.dir / READY).touch()


def apps_of(stores: Stores, group: Pod) -> list[Pod]:
    return [app for app in stores.apps.all() if app.spec.labels.get(POD_LABEL) == group.uuid]


def app_named(stores: Stores, group: Pod, app: str) -> Pod | None:
    return next((pod for pod in apps_of(stores, group) if pod.spec.labels.get(APP_LABEL) == app), None)
