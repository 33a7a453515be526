"""Pods as systemd-machined machines, so that `machinectl list` and `machinectl status` show them.

A pod's unit already exists when we register (its main process is the app), so
RegisterMachine fits, not CreateMachine (which makes a scope of its own):
machined looks the unit up from the leader PID, tracks it, and drops the
machine by itself when the unit stops. Registration is best effort: a host
without systemd-machined (package systemd-container) runs pods all the same.
"""

from __future__ import annotations

import re

from sdrun.debug import debug
from sdrun.errors import NotFound, SdrunError
from sdrun.pod import Pod
from sdrun.systemd import bus

# machined takes hostnames: dot-separated labels of letters, digits and inner hyphens.
MACHINE_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def machine_name(pod: Pod) -> str | None:
    return pod.name if MACHINE_NAME.fullmatch(pod.name) else None


def register(systemd: bus.Systemd, pod: Pod, *, wait: bool = True) -> bool:
    """Register a running pod's service with machined; False (and why, in the debug log) if not.
    Without wait, machined's answer is not awaited: `sdrun run` does not pay for it."""
    name = machine_name(pod)
    if name is None:
        debug("machined", "pod name %r is not a valid machine name: not registered with machined", pod.name)
        return False
    try:
        leader = int(systemd.unit_property(pod.unit, bus.SERVICE, "MainPID") or 0)
        if not leader:
            return False  # the app has already ended
        root = pod.spec.rootfs or ""
        bus.register_machine(systemd, name, bytes.fromhex(pod.uuid.replace("-", "")), leader, root, wait=wait)
    except (NotFound, SdrunError) as error:
        debug("machined", "not registered with machined: %s", error.message)
        return False
    return True
