"""The kvm stage1's entry inside the unit: share the pod's root, start virtiofsd, exec the VM.

It runs once per start and leaves nothing of itself: the unit's main process
becomes vm.sh (then qemu's parent), virtiofsd stays as a child in the unit's
cgroup and exits when qemu goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import make_mount_point, remount_read_only
from sdrun.linux.mounts import BindMount, MountOperation, execute_plan
from stage1 import checked_plan
from stage1.app import ResolvedApp, resolve_app
from stage1.etcfiles import etc_mounts, pod_hostname
from stage1.kvm.backend import PLAN_FILE, stage1_dir
from stage1.kvm.machine import VIRTIOFS_SOCKET, virtiofsd_command
from stage1.process import SystemdNotifier
from stage1.rootfs import read_only_tmpfs

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from stage1 import EntryPlan

    class Plan(EntryPlan):
        """stage1/qemu.json (backend.prepare); the entry reads the pod's manifest too."""

        qemu: list[str]  # qemu's command line, relative to the stage1 directory (machine.qemu_command)

    from stage1.kvm.network import GuestNetwork

VM_SCRIPT = Path(__file__).with_name("vm.sh")


def become_vm(pod: Pod) -> NoReturn:
    scratch = stage1_dir(pod)
    plan: Plan = checked_plan(str(scratch / PLAN_FILE), json.loads((scratch / PLAN_FILE).read_text()))
    qemu = plan["qemu"]
    notifier = SystemdNotifier()
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)  # our mounts never reach the host
    os.chdir(scratch)  # qemu and virtiofsd take paths relative to it (see machine.py)
    root = scratch / "rootfs"
    mount_root(pod, root)
    app = resolve_app(root, pod.spec.app)
    execute_plan(root_mounts(pod), root)  # before virtiofsd copies our mount table
    for tmpfs in guest_tmpfs(pod):  # the guest mounts them, maybe on a read-only root: their points are made here
        make_mount_point(root, tmpfs.partition(":")[0], directory=True)
    if pod.spec.isolation.read_only:  # only now: the binds may have made their mount points
        remount_read_only(root, "/")
    network = attach_network(pod)
    Path("guest.conf").write_text(guest_config(pod, app, network))
    Path("status").write_bytes(b"")  # an earlier start's (Restart=) must not pass for this one's
    start_virtiofsd(root)
    notifier.notify("READY=1")
    stop_signal = (pod.spec.stop_signal or "SIGTERM").removeprefix("SIG")
    nic = network.qemu_arguments() if network else []
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)  # for vm.sh and qemu: nothing they exec gains a privilege
    os.execv("/bin/sh", ["/bin/sh", str(VM_SCRIPT), stop_signal, *qemu, *nic])


def mount_root(pod: Pod, root: Path) -> None:
    """The pod's root at root: an overlay whose upper layer is the pod's own, so the --rootfs
    directory, which other pods may run too, is never written, not even for the mount points
    of root_mounts() (with --read-only, the root is made read-only once they are in)."""
    spec = pod.spec
    if spec.rootfs is None:
        from stage1.rootfs import mount_pod_rootfs  # type: ignore[import-not-found,import-untyped,unused-ignore]

        sc.mount(str(mount_pod_rootfs(pod)), root, None, sc.MS_BIND | sc.MS_REC)
    else:
        sc.mount(spec.rootfs, "lower", None, sc.MS_BIND | sc.MS_REC)
        sc.mount("overlay", root, "overlay", 0, "lowerdir=lower,upperdir=upper,workdir=work")


def root_mounts(pod: Pod) -> list[MountOperation]:
    """What the guest sees bound into its root: the pod's /etc files (its network's hosts file
    and resolv.conf, read-only, on a network), then its volumes. They are bound on the host,
    into the tree virtiofsd serves, so the guest init has nothing to mount, and a network's
    hosts file, rewritten in place as pods come and go, stays current in the guest."""
    volumes = [BindMount(volume.source, volume.target, volume.read_only) for volume in pod.spec.app.volumes]
    return [*etc_mounts(pod), *volumes]


def attach_network(pod: Pod) -> GuestNetwork | None:
    """The pod's network namespace, if the networking setup made one; else no NIC (loopback only)."""
    from sdrun.net import network_namespace

    netns = network_namespace(pod)
    if netns is None:
        return None
    from stage1.kvm.network import join_and_attach

    return join_and_attach(netns)


def guest_config(pod: Pod, app: ResolvedApp, network: GuestNetwork | None = None) -> str:
    """The pod's spec as shell assignments, which the guest init sources from fw_cfg."""
    settings = {
        "SDRUN_ARGV": shlex.join(app.argv),
        "SDRUN_ENV": shlex.join(f"{key}={value}" for key, value in app.env.items()),
        "SDRUN_WORKDIR": app.workdir,
        "SDRUN_UID": str(app.credentials.uid),
        "SDRUN_GID": str(app.credentials.gid),
        "SDRUN_HOSTNAME": pod_hostname(pod),
        "SDRUN_TMPFS": shlex.join(guest_tmpfs(pod)),
        # --sysctl as PATH=VALUE, PATH under /proc/sys: the guest's kernel is the pod's own
        "SDRUN_SYSCTL": shlex.join(
            key.replace(".", "/") + "=" + value
            for key, _, value in (text.partition("=") for text in pod.spec.isolation.sysctl)
        ),
        "SDRUN_NET_ADDRESS": network.address if network else "",
        "SDRUN_NET_GATEWAY": network.gateway if network else "",
    }
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in settings.items())


def guest_tmpfs(pod: Pod) -> tuple[str, ...]:
    """--tmpfs, after --read-only's tmpfs but those over a volume: the guest mounts them all once
    the host has bound the volumes, and a tmpfs on /run would hide a volume on /run/x."""
    volumes = [volume.target for volume in pod.spec.app.volumes]
    defaults = [
        tmpfs
        for tmpfs in read_only_tmpfs(pod)
        if not any(target.startswith(tmpfs.partition(":")[0] + "/") for target in volumes)
    ]
    return (*defaults, *pod.spec.isolation.tmpfs)


def start_virtiofsd(root: Path) -> None:
    """virtiofsd on a socket we listen on already, so that qemu can connect at once; its
    log goes to a file, so that its chatter stays out of the app's output."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(VIRTIOFS_SOCKET)  # left by an earlier start (Restart=)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(VIRTIOFS_SOCKET)
    listener.listen(1)
    with open("virtiofsd.log", "wb") as log:
        subprocess.Popen(
            virtiofsd_command(listener.fileno(), root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(listener.fileno(),),
        )
    listener.close()
