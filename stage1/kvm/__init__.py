"""The kvm stage1: the pod's rootfs inside a qemu micro-VM with a kernel of its own.

stage0 calls plan(): it finds the guest kernel, builds (or reuses) the cached
initramfs, settles on KVM or TCG, and writes the qemu command line to the pod's
stage1/qemu.json. The unit's entry (`python -m stage1.kvm run POD_DIR`,
launch.py) mounts the pod's root in a private mount namespace, serves it to the
guest with virtiofsd, writes the guest's configuration, says READY=1 and execs
vm.sh, which runs qemu and exits with the app's status. The guest's init
(init.sh) applies the spec, runs the app and powers off. docs/stage1.md has
the whole picture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SpecError
from sdrun.paths import Paths
from stage1.interface import Stage1, UnitPlan, entry_command, refuse_flags

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import PodSpec
    from sdrun.systemd.bus import Property
    from stage1.interface import EnterTerminal
    from stage1.process import AppChanges

DEFAULT_STOP_TIMEOUT = 10.0  # seconds, as the namespace stage1


class Kvm(Stage1, name="kvm"):
    default_network = "none"  # a VM gets a NIC on a network only: --net default or --net NAME
    passes_stdin = False  # qemu's stdio chardev is the app's output, not its input

    def refuse_unsupported(self, spec: PodSpec) -> None:
        refuse_what_does_not_apply(spec)

    def plan(self, pod: Pod) -> UnitPlan:
        prepare(pod)
        return UnitPlan(*entry_command("stage1.kvm", pod), tuple(unit_properties(pod)))

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        from stage1.kvm.launch import become_vm

        prepare(pod)
        become_vm(pod)

    def enter(
        self,
        pod: Pod,
        leader: int,
        argv: list[str],
        changes: AppChanges | None = None,
        terminal: EnterTerminal | None = None,  # never given: enter_terminal is False, stage0 makes one
    ) -> NoReturn:
        from stage1.kvm.agent import enter

        if changes:  # the guest's agent runs the command as the app; it takes no other user, env, directory
            raise SpecError("enter -u, -e and -w: not for the kvm stage1")

        enter(pod, leader, argv)

    def gc(self, pod: Pod) -> None:
        # The mounts lived in the unit's mount namespace, virtiofsd and qemu in its cgroup;
        # the pipes, logs and upper layer go with the pod directory.
        pass


def unit_properties(pod: Pod) -> list[Property]:
    from sdrun.systemd.properties import stop_properties
    from stage1.kvm.machine import VM_OVERHEAD, guest_memory

    spec = pod.spec
    stop_timeout = DEFAULT_STOP_TIMEOUT if spec.stop_timeout is None else spec.stop_timeout
    properties: list[Property] = [
        ("Type", "s", "notify"),
        # vm.sh's READY=1, and the network tear-down's EXTEND_TIMEOUT_USEC= (sdrun.net.hook); not qemu's.
        ("NotifyAccess", "s", "exec"),
        # SIGTERM goes to vm.sh alone, which asks the guest to stop the app; SIGKILL, after
        # TimeoutStopSec=, to everything: qemu and virtiofsd. A stop timeout of 0 is SIGKILL at
        # once (stop_properties), to everything.
        ("KillMode", "s", "control-group" if stop_timeout == 0 else "mixed"),
        *stop_properties(stop_timeout, signal.SIGTERM),
    ]
    if spec.resources.memory is not None:  # --memory is the guest's RAM; the unit also holds qemu
        properties.append(("MemoryMax", "t", guest_memory(spec) + VM_OVERHEAD))
    return properties


def stage1_dir(pod: Pod) -> Path:
    return Paths.stage1_dir(pod.dir)


# The guest honours --hostname, --read-only, --tmpfs and --init itself; these mean nothing for a VM.
REFUSED_ISOLATION = (
    "--private-users",
    "--cap-add",
    "--cap-drop",
    "--seccomp",
    "--device",
    "--selinux-type",
    "--apparmor",
)


def refuse_what_does_not_apply(spec: PodSpec) -> None:
    """Flags of the namespace stage1 that mean nothing for a VM: refuse rather than ignore them."""
    given = {flag: present for flag, present in spec.isolation.flags_given().items() if flag in REFUSED_ISOLATION}
    given |= {
        "--net host": spec.net == "host",
        # The VM's main process says READY=1 once qemu runs, and the guest has no way to the
        # host's notify socket or to sockets systemd passes us.
        "notify = true": spec.service.notify,
        "listen": bool(spec.service.listen),
        "a volume's :U": any(volume.chown for volume in spec.app.volumes),
        "a volume's :idmap": any(volume.idmap for volume in spec.app.volumes),
    }
    refuse_flags(given, "does not apply to the kvm stage1: the VM is the pod's boundary")
    if spec.app.ulimits:
        raise SpecError("--ulimit is not carried into the kvm stage1's guest", hint="set limits in the app's command")


def prepare(pod: Pod) -> None:
    """Check the pod, pick kernel, initramfs and accelerator; write the qemu command line and the
    pod's /etc files."""
    from stage1.app import resolve_app
    from stage1.etcfiles import write_etc_files
    from stage1.kvm import initramfs, machine

    spec = pod.spec
    refuse_what_does_not_apply(spec)
    if spec.rootfs:
        resolve_app(Path(spec.rootfs), spec.app)  # fail now, not inside the unit
    elif importlib.util.find_spec("stage1.rootfs") is None:
        raise SpecError("the kvm stage1 cannot mount images yet", hint="use --rootfs DIR")
    kernel = initramfs.find_kernel(spec.kvm_kernel)
    cache = Paths.of_pod(pod.dir).kvm_cache
    image = initramfs.initramfs(kernel, cache)
    accel = machine.choose_accel(spec.kvm_accel, kernel, image, cache)
    scratch = stage1_dir(pod)
    for directory in (scratch, scratch / "upper", scratch / "work", scratch / "lower", scratch / "rootfs"):
        directory.mkdir(mode=0o755, exist_ok=True)
    for fifo in machine.FIFOS:
        if not (scratch / fifo).exists():
            os.mkfifo(scratch / fifo, 0o600)
    write_etc_files(pod, scratch)
    from stage1.namespace.container import auto_range_base

    # A uid of the pod's own, out of the host's way: the first of the range --private-users=auto would give it.
    command = machine.qemu_command(spec, kernel, image, accel, auto_range_base(pod.uuid))
    (scratch / "qemu.json").write_text(json.dumps(command, indent=1) + "\n")
