"""sdrun.linux's and sdrun.files' low-level helpers, on real files and against libseccomp's tables."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyseccomp
import pytest

from sdrun.errors import SdrunError
from sdrun.files import atomic_file, temporary_name, write_atomically
from sdrun.linux import syscalls

LIBSECCOMP_ARCHES = {"x86_64": pyseccomp.Arch.X86_64, "aarch64": pyseccomp.Arch.AARCH64}


@pytest.mark.parametrize("machine", sorted(syscalls.SYSCALL_NUMBERS))
def test_each_machines_syscall_numbers_are_libseccomps(machine: str) -> None:
    arch = LIBSECCOMP_ARCHES[machine]
    for name, number in syscalls.SYSCALL_NUMBERS[machine].items():
        assert pyseccomp.resolve_syscall(arch, name) == number, (machine, name)


def test_every_machine_has_a_number_for_every_syscall_called_by_number() -> None:
    names = {frozenset(table) for table in syscalls.SYSCALL_NUMBERS.values()}
    assert len(names) == 1 and {"pivot_root", "openat2"} <= next(iter(names))


def test_an_unknown_machine_is_a_clear_error_not_a_wrong_syscall() -> None:
    with pytest.raises(SdrunError, match="no syscall number of openat2 on machine 'sparc64'"):
        syscalls.syscall_number("openat2", "sparc64")


def test_an_atomic_write_replaces_the_file_and_leaves_only_it(tmp_path: Path) -> None:
    target = tmp_path / "pod.json"
    target.write_text("old\n")
    write_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["pod.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as stream:
        stream.write(b"half of the new")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["index.json"]


def test_an_atomic_write_whose_rename_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "lease"
    (target / "in-the-way").mkdir(parents=True)  # a non-empty directory: rename(2) over it fails
    with pytest.raises(OSError):
        write_atomically(target, b"{}")
    assert os.listdir(tmp_path) == ["lease"] and os.listdir(target) == ["in-the-way"]


def test_an_atomic_write_gives_a_new_file_its_mode_from_the_first_byte(tmp_path: Path) -> None:
    target = tmp_path / "auth.json"
    stale = Path(temporary_name(target))  # a crashed writer's, which had this process's pid
    stale.write_text("stale")
    stale.chmod(0o644)
    write_atomically(target, "secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "secret"
    assert os.listdir(tmp_path) == ["auth.json"]
