"""sdrun.linux's and sdrun.files' low-level helpers, on real files and against libseccomp's tables."""

from __future__ import annotations

import pyseccomp
import pytest

from sdrun.errors import SdrunError
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
