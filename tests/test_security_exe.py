"""A pod must never write the host's Python interpreter through /proc/self/exe (CVE-2019-5736).

The namespace stage1's processes are sdrun's interpreter up to the app's execve(): the unit's
entry and the container init, the `sdrun enter` child (and so a health check). A script starting
`#!/proc/self/exe` that one of them executes makes the kernel run that interpreter binary inside
the pod, with the image's dynamic loader and libraries; tests/programs/exe_attack.c is such a
library, taken from the image's /etc/ld.so.preload or put where the interpreter looks for its
libpython. It hands a descriptor of /proc/self/exe to a static writer, which reopens it for
writing as soon as no host process runs the interpreter.

pytest runs sdrun's interpreter itself, which keeps that file busy (ETXTBSY) for as long as the
test runs: the pod's sdrun CLI runs from a copy of the interpreter instead, which no process runs
once the CLI's commands have ended, so that the attack would succeed on it if it could."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from sdrun.linux import syscalls as sc
from tests.conftest import PROJECT, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for

pytestmark = needs_systemd
PROGRAMS = Path(__file__).resolve().parent / "programs"
INTERPRETER = Path(os.path.realpath(sys.executable))  # the venv's python is a link to it
BASE_PREFIX = Path(os.path.realpath(sys.base_prefix))
STDLIB = f"python{sys.version_info.major}.{sys.version_info.minor}"
# /attack-KIND each: an installed pod's app, a command entered into it, its health check, and
# the app of a `run --scope` pod (whose container init is a fork of the CLI's child).
KINDS = ("app", "enter", "check", "scope")
PRELOADED = "/lib/sdrun-exe-attack.so"


class Interpreter(NamedTuple):
    prefix: Path
    binary: Path
    sdrun: Path  # the sdrun CLI, run by this interpreter


class Fingerprint(NamedTuple):
    sha256: str
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        status = path.stat()
        return cls(hashlib.sha256(path.read_bytes()).hexdigest(), status.st_mtime_ns, status.st_size)


@pytest.fixture
def interpreter(sdrun: Sdrun) -> Iterator[Interpreter]:
    """A prefix of its own for the CLI: a copy of the interpreter binary and a link to the standard
    library; the virtualenv's packages and the project come first on the CLI's sys.path."""
    prefix = sdrun.root.parent / f"python-{sdrun.root.name}"
    binary = prefix / INTERPRETER.relative_to(BASE_PREFIX)
    binary.parent.mkdir(parents=True)
    shutil.copy2(INTERPRETER, binary)
    (prefix / "lib").mkdir(exist_ok=True)
    (prefix / "lib" / STDLIB).symlink_to(BASE_PREFIX / "lib" / STDLIB)
    cli = binary.with_name("sdrun")  # where units.sdrun_command() looks for it: next to sys.executable
    paths = [str(PROJECT), sysconfig.get_paths()["purelib"]]
    cli.write_text(
        f"#!{binary} -S\nimport sys\nsys.path[:0] = {paths!r}\n"
        "from sdrun.cli import entry_point\nsys.exit(entry_point())\n"
    )
    cli.chmod(0o755)
    yield Interpreter(prefix, binary, cli)
    for mount_point in mounts_over(prefix):  # a view of it the fix made (never of sdrun's own interpreter)
        sc.umount2(mount_point, sc.MNT_DETACH)
    shutil.rmtree(prefix, ignore_errors=True)


def mounts_over(prefix: Path) -> list[str]:
    """Mount points of overlays with prefix as a lower layer."""
    table = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in table if " - overlay " in line and f"lowerdir={prefix}:" in line]


def host_libraries(binary: Path) -> list[tuple[str, Path]]:
    """(name, path) of each shared library the loader gives the binary on the host, loader included."""
    listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libraries = []
    for line in listing.splitlines():
        words = line.split()
        if "=>" in words and words[2].startswith("/"):
            libraries.append((words[0], Path(words[2])))
        elif words and words[0].startswith("/"):
            libraries.append((Path(words[0]).name, Path(words[0])))
    return libraries


def install_file(rootfs: Path, path: Path, source: Path) -> None:
    target = rootfs / str(path).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)  # the file a link names, as a file of the image
    target.chmod(0o755)


@pytest.fixture(params=["ld.so.preload", "libpython"])
def attack_rootfs(request: pytest.FixtureRequest, private_rootfs: Path, sdrun: Sdrun) -> Path:
    """The busybox rootfs with what the host interpreter needs to start inside it (glibc's loader
    and libraries, its libpython), the attack library, either preloaded or as that libpython, the
    static writer, and the scripts /attack-KIND."""
    build = sdrun.root / "build"
    build.mkdir()
    library, writer = build / "exe_attack.so", build / "attack-writer"
    gcc = ["gcc", "-O2", "-Wall", "-Werror"]
    subprocess.run([*gcc, "-shared", "-fPIC", "-o", str(library), str(PROGRAMS / "exe_attack.c")], check=True)
    subprocess.run([*gcc, "-static", "-o", str(writer), str(PROGRAMS / "exe_writer.c")], check=True)
    replaced = False
    for name, path in host_libraries(INTERPRETER):
        stands_in = request.param == "libpython" and name.startswith("libpython")
        install_file(private_rootfs, path, library if stands_in else path)
        replaced |= stands_in
    if request.param == "libpython" and not replaced:
        pytest.skip(f"{INTERPRETER} has libpython built in: no library of its own to stand in for")
    if request.param == "ld.so.preload":
        install_file(private_rootfs, Path(PRELOADED), library)
        (private_rootfs / "etc" / "ld.so.preload").write_text(f"{PRELOADED}\n")
    install_file(private_rootfs, Path("/attack-writer"), writer)
    for kind in (*KINDS, "privileged"):
        script = private_rootfs / f"attack-{kind}"
        script.write_text("#!/proc/self/exe\n")
        script.chmod(0o755)
    return private_rootfs


def processes_running(binaries: set[str]) -> list[int]:
    running = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") in binaries:
                    running.append(int(entry.name))
            except OSError:  # gone, or a kernel thread
                continue
    return running


def test_a_pod_cannot_write_the_host_interpreter_through_proc_self_exe(
    sdrun: Sdrun, interpreter: Interpreter, attack_rootfs: Path
) -> None:
    before = Fingerprint.of(interpreter.binary)
    markers = sdrun.root / "markers"
    markers.mkdir()
    name = unique_name("exe")

    cli_command = [str(interpreter.sdrun), "--root", str(sdrun.root)]
    in_scope: subprocess.Popen[bytes] | None = None

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*cli_command, *args], capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"sdrun {' '.join(args)}: {result.returncode}\n{result.stderr}"
        return result

    volume = ("-v", f"{markers}:/markers")
    health = ("--healthcheck", "/attack-check", "--healthcheck-interval", "3600")  # started below, once
    cli(
        "install", "--now", name, "--net", "none", *volume, *health, "--rootfs", str(attack_rootfs), "--", "/attack-app"
    )
    try:
        cli("enter", name, "--", "/attack-enter")
        check = subprocess.run(["systemctl", "start", f"sdrun-health@{name}.service"], check=False)
        assert check.returncode == 0
        # Each writer records its outcome once it wrote, failed otherwise than with ETXTBSY, or gave up.
        recorded = contextlib.suppress(AssertionError)  # the comparison below names what is missing
        with recorded:
            wait_for(lambda: all((markers / kind).exists() for kind in KINDS[:-1]), timeout=40)
        # Last, since its CLI runs for as long as its pod (whose end kills the writer): before the
        # fix, a scope's writer could only wait for ETXTBSY to go, in vain.
        scope = [*cli_command, "run", "--rm", "--scope", "--net", "none", *volume, "--rootfs", str(attack_rootfs)]
        in_scope = subprocess.Popen([*scope, "--", "/attack-scope"], stdout=subprocess.DEVNULL)
        with recorded:
            wait_for((markers / "scope").exists, timeout=40)
        outcomes = {marker.name: marker.read_text().strip() for marker in markers.iterdir()}
        assert outcomes == dict.fromkeys(KINDS, "Read-only file system")
    finally:
        if in_scope is not None:
            in_scope.terminate()  # the CLI passes it on to the app, which exits
            in_scope.wait(timeout=60)
        cli("uninstall", name)
    assert systemctl_show(f"sdrun-{name}.service", "ActiveState")["ActiveState"] == "inactive"
    views = {
        str(Path(view) / interpreter.binary.relative_to(interpreter.prefix)) for view in mounts_over(interpreter.prefix)
    }
    wait_for(lambda: not processes_running({str(interpreter.binary), *views}))
    assert Fingerprint.of(interpreter.binary) == before


def test_with_cap_sys_admin_neither_exe_nor_the_mapped_file_is_writable(
    sdrun: Sdrun, interpreter: Interpreter, attack_rootfs: Path
) -> None:
    """CAP_SYS_ADMIN opens /proc/self/map_files, whose links name the file the kernel maps: under an
    overlayfs, the lower layer's file, on overlayfs's own read-only mount of the layer."""
    before = Fingerprint.of(interpreter.binary)
    markers = sdrun.root / "markers"
    markers.mkdir()
    options = ("--net", "none", "--cap-add", "SYS_ADMIN", "--seccomp", "unconfined", "-v", f"{markers}:/markers")
    command = [str(interpreter.sdrun), "--root", str(sdrun.root), "run", "-d", *options]
    started = subprocess.run([*command, "--rootfs", str(attack_rootfs), "--", "/attack-privileged"], check=False)
    assert started.returncode == 0
    kinds = ("privileged", "privileged-map_files")
    with contextlib.suppress(AssertionError):  # the comparison below names what is missing
        wait_for(lambda: all((markers / kind).exists() for kind in kinds), timeout=40)
    assert {marker.name: marker.read_text().strip() for marker in markers.iterdir()} == dict.fromkeys(
        kinds, "Read-only file system"
    )
    sdrun("rm", "-f", *sdrun.pods())
    assert Fingerprint.of(interpreter.binary) == before


def ensure_from(interpreter: Interpreter) -> subprocess.Popen[str]:
    """stage1.sealed.ensure() in a process of the copied interpreter: it prints the view's executable."""
    program = f"import sys; sys.path.insert(0, {str(PROJECT)!r}); from stage1 import sealed; print(sealed.ensure())"
    return subprocess.Popen([str(interpreter.binary), "-I", "-S", "-c", program], stdout=subprocess.PIPE, text=True)


def ensured(processes: list[subprocess.Popen[str]]) -> set[str]:
    outputs = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert [process.returncode for process in processes] == [0] * len(processes)
    return outputs


def test_the_view_is_mounted_once_read_only_for_good_and_again_after_an_upgrade(interpreter: Interpreter) -> None:
    (executable,) = ensured([ensure_from(interpreter) for _ in range(4)])  # at once: one mount
    (view,) = mounts_over(interpreter.prefix)
    assert executable == str(Path(view) / interpreter.binary.relative_to(interpreter.prefix))
    (line,) = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if line.split()[4] == view]
    assert line.split(" - ")[1].split()[2].startswith("ro,")  # the superblock's options
    # Even root, in a mount namespace of its own, cannot make it writable: the superblock stays
    # read-only, whatever the mount's flags say.
    attempt = 'mount -o remount,rw "$1" && echo remounted; mount -o remount,bind,rw "$1"; echo x >> "$2" && echo wrote'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", attempt, "sh", view, executable]
    tried = subprocess.run(command, capture_output=True, text=True, check=False)
    assert "remounted" not in tried.stdout and "wrote" not in tried.stdout
    assert "Read-only file system" in tried.stderr
    # An upgrade replaces the interpreter: the next start mounts a view of the new one instead.
    replacement = interpreter.binary.with_name("new")
    shutil.copy2(interpreter.binary, replacement)
    replacement.replace(interpreter.binary)
    assert ensured([ensure_from(interpreter)]) == {executable}
    assert mounts_over(interpreter.prefix) == [view]
    assert os.stat(executable).st_ino == interpreter.binary.stat().st_ino


def test_debians_python_runs_from_a_view_of_usr_with_its_standard_library() -> None:
    """Debian's python3 has /usr for prefix: the view is of /usr, and Python finds its library there."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3 on this machine")
    ask = "import sys; print(sys.base_prefix)"
    if subprocess.run([python, "-I", "-S", "-c", ask], capture_output=True, text=True, check=True).stdout != "/usr\n":
        pytest.skip(f"{python}'s prefix is not /usr")
    ensure = f"import sys; sys.path.insert(0, {str(PROJECT)!r}); from stage1 import sealed; print(sealed.ensure())"
    try:
        sealed = subprocess.run([python, "-I", "-S", "-c", ensure], capture_output=True, text=True, check=True)
        executable = sealed.stdout.strip()
        (view,) = mounts_over(Path("/usr"))
        assert executable == f"{view}/bin/{python.resolve().name}"
        where = "import json, sys; print(sys.prefix, json.__file__)"
        found = subprocess.run([executable, "-I", "-S", "-c", where], capture_output=True, text=True, check=True)
        assert found.stdout.split() == [view, f"{view}/lib/{python.resolve().name}/json/__init__.py"]
    finally:
        for mount_point in mounts_over(Path("/usr")):
            sc.umount2(mount_point, sc.MNT_DETACH)
