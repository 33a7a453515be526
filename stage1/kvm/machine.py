"""The VM a kvm pod runs in: which accelerator, and the qemu command line.

Every path on the command line is relative to the pod's stage1 directory, the
directory qemu runs in: a unix socket path must fit in 108 bytes, and pod
directories under a custom --root can be longer than that.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError
from sdrun.files import write_atomically
from sdrun.spec import PodSpec
from stage1.kvm.initramfs import Kernel

log = logging.getLogger("sdrun.kvm")

QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")  # a firmware that only loads the kernel: faster than SeaBIOS
KERNEL_ARGUMENTS = "console=ttyS0 quiet loglevel=0 panic=-1"
# Under TCG no guest code runs speculatively on the host's CPU, so the guest's speculation
# mitigations only cost time, and the emulated TSC is the host's: its stability checks too.
TCG_KERNEL_ARGUMENTS = "mitigations=off tsc=reliable no_timer_check cryptomgr.notests"
DEFAULT_MEMORY = 512 << 20  # guest RAM without --memory; qemu only touches what the guest uses
MINIMUM_MEMORY = 128 << 20  # the cloud kernel and the init need about 100 MiB
# What qemu (its TCG translation cache, capped below, its own heap) and virtiofsd need
# beyond the guest's RAM: added to the unit's MemoryMax= so --memory means guest RAM.
VM_OVERHEAD = 256 << 20
TCG_CACHE_MIB = 64
PROBE_TIMEOUT = 10.0  # seconds: KVM boots the probe in well under one; a broken KVM hangs
# What the guest init prints on the serial console when it runs as the probe (init.sh). Not a
# word of the kernel command line, which a kernel may echo on its way to a panic.
PROBE_MARKER = b"sdrun probe: the guest init runs"
# Part of the verdict cache's key: verdicts of an earlier probe are not trusted. 2: a boot is
# the init's PROBE_MARKER, no longer qemu's exit status.
PROBE_VERSION = "2"


class Port(NamedTuple):
    """A virtio-serial port: its name in the guest and the qemu chardev behind it."""

    name: str
    chardev: str


# The app's output goes to a virtio console (the guest's /dev/hvc0) on qemu's stdout, the
# unit's: the journal. A console port takes writes whether or not qemu reports its host
# side connected; a plain port on a stdio chardev never is, and the guest's writes block.
OUTPUT_CHARDEV = "stdio,signal=off"
# file: the app's exit status, read by vm.sh. pipe: FIFOs NAME.in/NAME.out that stay open
# (qemu holds them read-write), so the guest's reads block instead of seeing EOF.
PORTS = (
    Port("sdrun.status", "file,path=status"),
    Port("sdrun.control", "pipe,path=control"),
    Port("sdrun.agent", "pipe,path=agent"),
)
FIFOS = ("control.in", "control.out", "agent.in", "agent.out")
VIRTIOFS_SOCKET = "virtiofs.sock"
# qemu's own seccomp filter: no obsolete syscalls, no fork or exec, no scheduling or affinity
# changes. elevateprivileges= stays allowed because -runas calls setuid() after the filter is in:
# qemu then runs as a uid with no capabilities, under no_new_privs (the entry's), so no set*id
# call can take it back to root.
SANDBOX = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"


def guest_memory(spec: PodSpec) -> int:
    memory = spec.resources.memory or DEFAULT_MEMORY
    if memory < MINIMUM_MEMORY:
        raise SdrunError(f"the kvm stage1 needs --memory of at least {MINIMUM_MEMORY >> 20}M for the guest")
    return memory


def guest_cpus(spec: PodSpec) -> int:
    return max(1, math.ceil(spec.resources.cpus or 1))


def qemu_command(spec: PodSpec, kernel: Kernel, initramfs: Path, accel: str, user: int) -> list[str]:
    """user: the host uid (and gid) qemu drops to once it has opened its files and devices,
    right before the guest runs."""
    memory_mib = guest_memory(spec) >> 20
    command = [QEMU, "-name", f"sdrun-{spec.name}", "-nodefaults", "-no-user-config", "-display", "none"]
    command += ["-sandbox", SANDBOX, "-runas", f"{user}:{user}"]
    command += ["-no-reboot", "-M", "pc,memory-backend=ram", *accel_arguments(accel)]
    if QBOOT.exists():
        command += ["-bios", str(QBOOT)]
    # virtiofs needs the guest's RAM shared with virtiofsd.
    command += ["-m", f"{memory_mib}M", "-object", f"memory-backend-memfd,id=ram,size={memory_mib}M,share=on"]
    command += ["-smp", str(guest_cpus(spec))]
    command += ["-kernel", str(kernel.image), "-initrd", str(initramfs), "-append", kernel_arguments(accel)]
    command += ["-serial", "file:console.log"]  # the kernel's and the init's messages, not the app's
    command += ["-chardev", f"socket,id=virtiofs,path={VIRTIOFS_SOCKET}"]
    command += ["-device", "vhost-user-fs-pci,chardev=virtiofs,tag=rootfs"]
    command += ["-device", "virtio-serial-pci"]
    command += ["-chardev", f"{OUTPUT_CHARDEV},id=output", "-device", "virtconsole,chardev=output"]
    for number, port in enumerate(PORTS):
        command += ["-chardev", f"{port.chardev},id=port{number}"]
        command += ["-device", f"virtserialport,chardev=port{number},name={port.name}"]
    command += ["-fw_cfg", "name=opt/sdrun/config,file=guest.conf"]
    return command


def kernel_arguments(accel: str) -> str:
    return KERNEL_ARGUMENTS if accel == "kvm" else f"{KERNEL_ARGUMENTS} {TCG_KERNEL_ARGUMENTS}"


def accel_arguments(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={TCG_CACHE_MIB}"]


def virtiofsd_command(fd: int, root: Path) -> list[str]:
    """virtiofsd serving the pod's root on a listening socket the entry made, so that qemu
    may connect before virtiofsd has started."""
    # Its own sandbox (pivot_root into the root it serves, in new mount, PID and network namespaces,
    # under a seccomp filter), said rather than left to its default; without MKNOD, so that a guest
    # makes no device node in the pod's upper layer on the host.
    command = ["/usr/lib/qemu/virtiofsd", f"--fd={fd}", "-o", f"source={root}", "-o", "cache=auto"]
    return [*command, "-o", "sandbox=namespace", "-o", "modcaps=-mknod"]


def choose_accel(wanted: str, kernel: Kernel, initramfs: Path, cache: Path) -> str:
    """kvm or tcg. auto boots a tiny guest under KVM once per host kernel and guest kernel
    (KVM_CREATE_VM can succeed on hosts where no guest boots), and remembers the verdict."""
    if wanted == "tcg":
        return "tcg"
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if wanted == "kvm":
        if not usable:
            raise SdrunError("--kvm-accel kvm: /dev/kvm is missing or not accessible")
        return "kvm"
    if not usable:
        log.warning("warning: no usable /dev/kvm: the kvm stage1 falls back to TCG emulation (slow)")
        return "tcg"
    key = verdict_key(kernel)
    verdict_file = cache / f"accel-{key}"
    try:
        verdict = verdict_file.read_text().strip()
    except FileNotFoundError:
        verdict = "kvm" if kvm_boots(kernel, initramfs) else "tcg"
        cache.mkdir(parents=True, exist_ok=True)
        write_atomically(verdict_file, verdict + "\n")
    if verdict != "kvm":
        log.warning("warning: KVM does not boot a guest on this host (cached in %s): using TCG (slow)", verdict_file)
    return verdict


def verdict_key(kernel: Kernel) -> str:
    """The verdict's cache key: the host's kernel (its KVM) and the guest kernel."""
    identity = f"{PROBE_VERSION}\0{platform.release()}\0{kernel.image}\0{kernel.version}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def kvm_boots(kernel: Kernel, initramfs: Path) -> bool:
    return probe_booted(run_probe(kernel, initramfs, "kvm"))


def run_probe(
    kernel: Kernel, initramfs: Path, accel: str, timeout: float = PROBE_TIMEOUT
) -> subprocess.CompletedProcess[bytes] | None:
    """Boot kernel with the initramfs under accel, its serial console on qemu's stdout; with
    sdrun.probe on the command line, the init prints PROBE_MARKER and powers off at once.
    None if the guest did not end within timeout."""
    command = [QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-M", "pc"]
    command += [*accel_arguments(accel), "-m", "256M", "-serial", "stdio"]
    command += ["-kernel", str(kernel.image), "-initrd", str(initramfs)]
    command += ["-append", f"{kernel_arguments(accel)} sdrun.probe"]
    log.debug("probing %s: %s", accel, shlex.join(command))
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    except FileNotFoundError:
        raise SdrunError(f"{QEMU} is not installed", hint="apt-get install qemu-system-x86") from None


def probe_booted(result: subprocess.CompletedProcess[bytes] | None) -> bool:
    """Whether the probe guest's init ran. qemu's exit status alone proves nothing: with
    -no-reboot and panic=-1, a guest that panics or triple-faults ends qemu with 0 as well."""
    if result is None:
        return False
    log.debug("the probe's qemu exited %d", result.returncode)
    return result.returncode == 0 and PROBE_MARKER in result.stdout
