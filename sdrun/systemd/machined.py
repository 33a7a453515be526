"""Pods as systemd-machined machines, so that `machinectl list` and `machinectl status` show them.

A pod's unit already exists when we register (its main process is the app), so
RegisterMachineWithNetwork fits, not CreateMachine (which makes a scope of its
own): machined looks the unit up from the leader PID, tracks it, and drops the
machine by itself when the unit stops. A pod on a network names its veth's host
end; machined reads the pod's addresses itself, in the leader's network
namespace. Registration is best effort: a host without systemd-machined
(package systemd-container) runs pods all the same.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdrun.debug import debug
from sdrun.errors import NotFound, SdrunError
from sdrun.net import on_network, veth_name
from sdrun.pod import Pod
from sdrun.systemd import bus

# machined takes hostnames: dot-separated labels of letters, digits and inner hyphens.
MACHINE_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def machine_name(pod: Pod) -> str | None:
    return pod.name if MACHINE_NAME.fullmatch(pod.name) else None


def register(systemd: bus.Systemd, pod: Pod) -> bool:
    """Register a running pod's service with machined; False (and why, in the debug log) if not."""
    name = machine_name(pod)
    if name is None:
        debug("machined", "pod name %r is not a valid machine name: not registered with machined", pod.name)
        return False
    try:
        leader = int(systemd.unit_property(pod.unit, bus.SERVICE, "MainPID") or 0)
        if not leader:
            return False  # the app has already ended
        machine_id = bytes.fromhex(pod.uuid.replace("-", ""))
        root = pod.spec.rootfs or ""
        try:
            bus.register_machine(systemd, name, machine_id, leader, root, host_interfaces(pod))
        except bus.MachineExists:
            if bus.machine_id(systemd, name) != machine_id:
                raise  # a machine of that name that is not this pod is left alone
            # This pod's own, from before a restart: systemd restarted the unit faster than
            # machined saw it stop, so the machine outlived its leader.
            bus.unregister_machine(systemd, name)
            bus.register_machine(systemd, name, machine_id, leader, root, host_interfaces(pod))
    except (NotFound, SdrunError) as error:
        debug("machined", "not registered with machined: %s", error.message)
        return False
    return True


def host_interfaces(pod: Pod) -> list[int]:
    """The index of the host end of the pod's veth, if it is on a network (sysfs: no netlink here)."""
    if not on_network(pod.spec):
        return []
    try:
        return [int(Path("/sys/class/net", veth_name(pod.uuid), "ifindex").read_text())]
    except (OSError, ValueError):
        return []
