"""The kvm stage1 as stage0 sees it: plan the unit, and the --scope and enter paths."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SpecError
from sdrun.paths import Paths
from sdrun.settings import STAGE1_FIELD, Setting, field_value, not_honoured
from sdrun.spec import SETTINGS_TABLE, parse_choice
from sdrun.systemd.propertytable import prop
from stage1 import INTERFACE_VERSION
from stage1.interface import Stage1, UnitPlan, entry_command, refuse_flags

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import PodSpec
    from sdrun.systemd.bus import Property
    from stage1.interface import EnterTerminal
    from stage1.kvm.entry import Plan
    from stage1.process import AppChanges

DEFAULT_STOP_TIMEOUT = 10.0  # seconds, as the namespace stage1
PLAN_FILE = "qemu.json"  # in the pod's stage1 directory; JSON, to read when a VM does not boot

ACCEL = Setting(
    "kvm_accel",
    lambda value: parse_choice(value, ("kvm", "tcg", "auto"), "kvm accelerator"),
    "kvm stage1: accelerator [auto: KVM if it boots, else TCG].",
    STAGE1_FIELD,
    "auto",
    metavar="kvm|tcg|auto",
)
KERNEL = Setting(
    "kvm_kernel",
    lambda value: str(Path(str(value)).absolute()),
    "kvm stage1: guest kernel [newest /boot/vmlinuz-*-cloud-amd64].",
    STAGE1_FIELD,
    metavar="PATH",
)


class Kvm(Stage1, name="kvm"):
    default_network = "none"  # a VM gets a NIC on a network only: --net default or --net NAME
    passes_stdin = False  # qemu's stdio chardev is the app's output, not its input
    settings = (ACCEL, KERNEL)

    def refuse_unsupported(self, spec: PodSpec) -> None:
        refuse_what_does_not_apply(spec)

    def plan(self, pod: Pod) -> UnitPlan:
        prepare(pod)
        return UnitPlan(*entry_command("stage1.kvm", pod), tuple(unit_properties(pod)))

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        from stage1.kvm.entry import become_vm

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
        from stage1.kvm.enter import enter

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
        prop("Type", "notify"),
        # vm.sh's READY=1, and the network tear-down's EXTEND_TIMEOUT_USEC= (sdrun.net.hook); not qemu's.
        prop("NotifyAccess", "exec"),
        # SIGTERM goes to vm.sh alone, which asks the guest to stop the app; SIGKILL, after
        # TimeoutStopSec=, to everything: qemu and virtiofsd. A stop timeout of 0 is SIGKILL at
        # once (stop_properties), to everything.
        prop("KillMode", "control-group" if stop_timeout == 0 else "mixed"),
        *stop_properties(stop_timeout, signal.SIGTERM),
    ]
    if spec.resources.memory is not None:  # --memory is the guest's RAM; the unit also holds qemu
        properties.append(prop("MemoryMax", guest_memory(spec) + VM_OVERHEAD))
    return properties


def stage1_dir(pod: Pod) -> Path:
    return Paths.stage1_dir(pod.dir)


def refuse_what_does_not_apply(spec: PodSpec) -> None:
    """Flags of the namespace stage1 that mean nothing for a VM (the settings table's rows that kvm
    does not honour: the guest honours --hostname, --read-only, --tmpfs, --init and /etc's itself):
    refuse rather than ignore them."""
    given = not_honoured(spec, SETTINGS_TABLE, "kvm")
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
    chosen = field_value(spec, KERNEL)
    kernel = initramfs.find_kernel(None if chosen is None else str(chosen))
    cache = Paths.of_pod(pod.dir).kvm_cache
    image = initramfs.initramfs(kernel, cache)
    accel = machine.choose_accel(str(field_value(spec, ACCEL)), kernel, image, cache)
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
    plan: Plan = {"interface": INTERFACE_VERSION, "qemu": command}
    (scratch / PLAN_FILE).write_text(json.dumps(plan, indent=1) + "\n")
