"""The guest's initramfs: busybox-static, the kernel modules the guest needs, and sdrun's init.

Built once per guest kernel and cached under <root>/cache/kvm, keyed by
everything that goes into it, as an uncompressed newc cpio archive (the guest
would spend longer decompressing it under TCG than the host spends reading it).
"""

from __future__ import annotations

import hashlib
import lzma
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError
from sdrun.files import atomic_file

BUSYBOX = Path("/bin/busybox")
GUEST_INIT = Path(__file__).with_name("init.sh")
BUILDER_VERSION = "1"  # bump when the archive's layout changes
# What the guest init needs: virtio over PCI, the virtio-serial ports, the root over
# virtiofs (Debian's cloud kernel has no 9p), the spec over fw_cfg, and the NIC.
GUEST_MODULES = ("virtio_pci", "virtio_console", "virtiofs", "qemu_fw_cfg", "virtio_net")
# Directories the init mounts on or writes to.
DIRECTORIES = ("bin", "dev", "proc", "sys", "run", "root", "lib", "lib/modules", "etc")


class Kernel(NamedTuple):
    image: Path
    version: str

    @property
    def modules(self) -> Path:
        return Path("/lib/modules") / self.version


def kernel_version(image: Path) -> str:
    """The release string a bzImage carries in its setup header (what `uname -r` says in the guest)."""
    try:
        with image.open("rb") as stream:
            header = stream.read(0x210)
            if len(header) < 0x210 or header[0x202:0x206] != b"HdrS":
                raise SdrunError(f"'{image}' is not an x86 Linux kernel image (bzImage)")
            (offset,) = struct.unpack_from("<H", header, 0x20E)
            stream.seek(offset + 0x200)
            text = stream.read(256)
    except OSError as error:
        raise SdrunError(f"cannot read the guest kernel '{image}': {error.strerror}") from None
    return text.split(b" ", 1)[0].decode(errors="replace")


def find_kernel(chosen: str | None) -> Kernel:
    """--kvm-kernel PATH, else the newest Debian cloud kernel in /boot (linux-image-cloud-amd64)."""
    if chosen:
        image = Path(chosen)
        if not image.is_file():
            raise SdrunError(f"guest kernel '{chosen}' does not exist")
    else:
        candidates = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"), key=lambda path: path.stat().st_mtime)
        if not candidates:
            raise SdrunError("no guest kernel found", hint="apt-get install linux-image-cloud-amd64, or --kvm-kernel")
        image = candidates[-1]
    return Kernel(image, kernel_version(image))


def module_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def modules_to_load(kernel: Kernel, wanted: Iterable[str] = GUEST_MODULES) -> list[Path]:
    """The module files to insmod, dependencies first; modules built into the kernel are skipped.
    With no /lib/modules/<version> (a custom --kvm-kernel), everything must be built in."""
    if not kernel.modules.is_dir():
        return []
    dependencies: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        paths[module_name(module)] = module
        dependencies[module_name(module)] = [module_name(need) for need in needs.split()]
    builtin = {module_name(line) for line in (kernel.modules / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name in builtin:
            return
        if name not in paths:
            raise SdrunError(f"guest kernel {kernel.version} has no module '{name}'")
        for dependency in dependencies[name]:
            visit(dependency)
        order.append(name)

    for name in wanted:
        visit(name)
    return [kernel.modules / paths[name] for name in order]


def module_bytes(path: Path) -> bytes:
    """busybox insmod loads plain ELF objects only: unpack what the distribution compressed."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix in (".zst", ".gz"):
        raise SdrunError(f"cannot unpack kernel module {path}: only .ko and .ko.xz are supported")
    return data


def check_static(busybox: Path) -> None:
    try:
        head = busybox.read_bytes()[:4096]
    except FileNotFoundError:
        raise SdrunError(f"{busybox} is missing", hint="apt-get install busybox-static") from None
    if b"ld-linux" in head:  # a dynamic busybox names its ELF interpreter near the start
        raise SdrunError(f"{busybox} is dynamically linked", hint="apt-get install busybox-static")


def cache_key(kernel: Kernel, modules: list[Path]) -> str:
    digest = hashlib.sha256(f"{BUILDER_VERSION}\0{kernel.version}\0".encode())
    for path in (BUSYBOX, *modules):
        info = path.stat()
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    digest.update(GUEST_INIT.read_bytes())
    return digest.hexdigest()[:20]


def initramfs(kernel: Kernel, cache: Path) -> Path:
    """The cached initramfs for kernel, built on first use."""
    check_static(BUSYBOX)
    modules = modules_to_load(kernel)
    target = cache / f"initramfs-{kernel.version}-{cache_key(kernel, modules)}.cpio"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as stream:  # a concurrent run sees all of it or builds its own
        for chunk in archive(modules):
            stream.write(chunk)
    return target


def archive(modules: list[Path]) -> Iterator[bytes]:
    """The archive's members: directories, /dev/console (the kernel opens it for init's stdio
    before anything is mounted), busybox and its applet links, the modules and their load order."""
    for directory in DIRECTORIES:
        yield cpio_member(directory, 0o040755)
    yield cpio_member("dev/console", 0o020600, rdev=(5, 1))
    yield cpio_member("bin/busybox", 0o100755, BUSYBOX.read_bytes())
    for applet in busybox_applets():
        yield cpio_member(f"bin/{applet}", 0o120777, b"busybox")
    names = []
    for path in modules:
        names.append(module_name(str(path)))
        yield cpio_member(f"lib/modules/{names[-1]}.ko", 0o100644, module_bytes(path))
    yield cpio_member("lib/modules/load-order", 0o100644, "".join(f"{name}\n" for name in names).encode())
    yield cpio_member("init", 0o100755, GUEST_INIT.read_bytes())
    yield cpio_member("TRAILER!!!", 0)


def busybox_applets() -> list[str]:
    import subprocess

    listing = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return [applet for applet in listing.split() if applet != "busybox"]


def cpio_member(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One member of a newc ("070701") archive, as the kernel's initramfs unpacker reads it."""
    encoded = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % field for field in fields)
    return _padded(header + encoded) + _padded(data)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
