"""Pod networking: a named network namespace per pod, veth pairs on a bridge, leases, nftables.

A pod with `--net default` or `--net NAME` gets, before its app starts, a
network namespace `/run/netns/sdrun-<uuid>` holding `eth0`, one end of a veth
pair whose other end sits on the network's bridge; an address from the
network's leases; a default route through the bridge; its published ports as
elements of nftables maps in sdrun's own table. The namespace stage1 joins that
namespace instead of making one. Everything is undone when the unit stops
(ExecStopPost) and by `sdrun gc` after a crash (docs/networking.md).

This module is what the rest of sdrun imports: names and paths only, nothing
heavy. Netlink lives in sdrun.net.link (its messages encoded by sdrun.net.rtnl) and is imported
only by the set-up of a pod that has a network (and gc); the unit's tear-down is sdrun.net.unplug,
run by path in a process of its own that imports the standard library's C modules and rtnl alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sdrun.paths import NETNS_DIR as NETNS_DIR  # where sdrun.net's modules take it from
from sdrun.paths import Paths

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import PodSpec

HOST = "host"  # the host's network namespace
NONE = "none"  # a private namespace with loopback only
DEFAULT = "default"  # the default bridge network
NETNS_PREFIX = "sdrun-"
HOST_GATEWAY = "host-gateway"  # --add-host NAME:host-gateway: the pod's network's gateway address
VETH_PREFIX = "sdv"  # + 12 hex digits of the pod UUID: interface names have at most 15 characters


def on_network(spec: PodSpec) -> bool:
    """Whether the pod joins a bridge network (and so needs set-up and tear-down)."""
    return spec.net not in (HOST, NONE)


def netns_name(pod_uuid: str) -> str:
    return f"{NETNS_PREFIX}{pod_uuid}"


def network_namespace(pod: Pod) -> Path | None:
    """The named network namespace the networking set-up made for this pod, for its stage1 to join
    instead of making one; None when there is none (then a private one with loopback only, or the host's)."""
    path = NETNS_DIR / netns_name(pod.uuid)
    return path if pod.spec.net != HOST and path.exists() else None


def veth_name(pod_uuid: str) -> str:
    return VETH_PREFIX + pod_uuid.replace("-", "")[:12]


def peer_mac(veth: str) -> str:
    """The MAC of eth0, the pod's end of the veth pair named veth: fixed by the name (so by the pod's
    UUID), so that the pod's source filter needs no lookup. 02 (a locally administered unicast
    address), then the name's first 10 hex digits."""
    digits = veth.removeprefix(VETH_PREFIX)[:10]
    return ":".join(["02", *(digits[index : index + 2] for index in range(0, 10, 2))])


def network_dir(root: Path, network: str) -> Path:
    return Paths(root).network_dir(network)


def pod_files(pod: Pod) -> dict[str, Path]:
    """The files a stage1 binds read-only at /etc/NAME for a pod on a network: the network's
    shared hosts file (every pod's name, updated in place as pods come and go; a pod with
    --add-host has a copy of its own with its lines added, updated with it) and a
    resolv.conf without the host's loopback resolvers, which a pod cannot reach."""
    if not on_network(pod.spec):
        return {}
    paths, network = Paths.of_pod(pod.dir), pod.spec.net
    hosts = paths.own_hosts(network, pod.uuid) if pod.spec.isolation.add_host else paths.network_hosts(network)
    return {"hosts": hosts, "resolv.conf": paths.network_resolv_conf(network)}


def own_hosts_path(root: Path, network: str, pod_uuid: str) -> Path:
    """The hosts file of a pod with --add-host on a network: the network's, and the pod's lines."""
    return Paths(root).own_hosts(network, pod_uuid)


def added_hosts(entries: tuple[str, ...]) -> str:
    """/etc/hosts lines for --add-host's NAME:IP entries (the IP resolved), in their order."""
    return "".join(f"{address}\t{name}\n" for name, _, address in (entry.partition(":") for entry in entries))


@contextlib.contextmanager
def scope_network(pod: Pod) -> Iterator[None]:
    """For a --scope pod, which has no unit hooks: its network for as long as the block runs."""
    if not on_network(pod.spec):
        yield
        return
    from sdrun.net.pod import setup, teardown

    root = Paths.root_of(pod.dir)
    setup(root, pod)
    try:
        yield
    finally:
        teardown(root, pod.uuid, pod.spec.net)


def lease_path(root: Path, network: str, pod_uuid: str) -> Path:
    return Paths(root).lease(network, pod_uuid)


def pod_address(pod: Pod) -> str | None:
    """The pod's address while it holds a lease (from before its app starts to after it ends)."""
    if not on_network(pod.spec):
        return None
    import json

    try:
        address = json.loads(lease_path(Paths.root_of(pod.dir), pod.spec.net, pod.uuid).read_text())["address"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return str(address)


def release(pod: Pod) -> bool:
    """Undo what is left of an ended pod's network (its unit's ExecStopPost did not run: a crash);
    True if anything was left."""
    root = Paths.root_of(pod.dir)
    if not (on_network(pod.spec) and lease_path(root, pod.spec.net, pod.uuid).exists()):
        return False
    from sdrun.net.pod import teardown

    return teardown(root, pod.uuid, pod.spec.net)


def collect_garbage(root: Path, keep: set[str]) -> list[str]:
    """`sdrun gc`'s part: the networks of pods not in keep, and objects no lease names."""
    if not Paths(root).net.is_dir():
        return []
    from sdrun.net.pod import gc

    return gc(root, keep)
