"""Seccomp profiles: sdrun's default allowlist and OCI JSON profiles, compiled once to BPF.

Compiling a profile with libseccomp takes milliseconds and an import; loading
its BPF takes microseconds. So stage0 compiles each distinct profile (profile
text + capability set) once into a cache, and the in-unit entry only reads the
bytes and hands them to the kernel (sdrun.linux.syscalls.load_seccomp_filter).
This is the only module that imports pyseccomp, and only inside compile().

The default profile denies, with EPERM, what a container has no business doing
even as root in its namespaces: loading kernel modules, kexec and reboot,
mount and friends, creating namespaces, changing the clock, keyrings, bpf and
perf events, process_vm_* on other processes, AF_ALG and AF_VSOCK sockets, and
the like. Some of these come back with the capability that guards them
(--cap-add SYS_ADMIN re-allows mount, unshare, setns...). Only the native architecture is allowed: a 32-bit
binary is killed on its first syscall.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sdrun.errors import SpecError
from sdrun.files import write_atomically
from sdrun.linux import caps

UNCONFINED = "unconfined"
DEFAULT = "default"
PROFILE_FORMAT = 4  # bump when the default profile or the compiler changes: old cache entries then miss

EPERM = 1
ENOSYS = 38
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
PERSONALITY_VALUES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)  # PER_LINUX, PER_LINUX32, UNAME26 and a query

ALLOWED_SYSCALLS = {
    "files": """read write open openat openat2 close close_range creat access faccessat faccessat2 stat fstat
        lstat newfstatat statx statfs fstatfs lseek pread64 pwrite64 readv writev preadv pwritev preadv2 pwritev2
        sendfile copy_file_range splice tee vmsplice dup dup2 dup3 pipe pipe2 fcntl flock fsync fdatasync sync
        syncfs sync_file_range truncate ftruncate fallocate fadvise64 readahead getdents getdents64 getcwd chdir
        fchdir chroot rename renameat renameat2 mkdir mkdirat rmdir link linkat unlink unlinkat symlink symlinkat
        readlink readlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat umask utime utimes
        utimensat futimesat mknod mknodat getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr
        listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr inotify_init inotify_init1
        inotify_add_watch inotify_rm_watch memfd_create""",
    "events": """select pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait
        epoll_pwait2 eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_gettime io_setup
        io_destroy io_submit io_cancel io_getevents io_pgetevents""",
    "memory": """brk mmap munmap mremap mprotect madvise mlock mlock2 munlock mlockall munlockall mincore msync
        remap_file_pages membarrier pkey_alloc pkey_free pkey_mprotect map_shadow_stack cachestat memfd_secret""",
    "processes": """fork vfork execve execveat exit exit_group wait4 waitid kill tkill tgkill getpid getppid
        gettid getpgid setpgid getpgrp getsid setsid getuid geteuid getgid getegid getresuid getresgid setuid
        setgid setreuid setregid setresuid setresgid setfsuid setfsgid getgroups setgroups capget capset prctl
        arch_prctl set_tid_address set_robust_list get_robust_list futex futex_waitv futex_wait futex_wake
        futex_requeue rseq restart_syscall getcpu
        sched_yield sched_getaffinity sched_setaffinity sched_getparam sched_setparam sched_getscheduler
        sched_setscheduler sched_get_priority_max sched_get_priority_min sched_rr_get_interval sched_getattr
        sched_setattr getpriority setpriority ioprio_get ioprio_set getrlimit setrlimit prlimit64 getrusage times
        uname sysinfo sethostname setdomainname pidfd_open pidfd_send_signal process_mrelease get_thread_area
        set_thread_area seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self ptrace""",
    "signals": """rt_sigaction rt_sigprocmask rt_sigreturn rt_sigsuspend rt_sigpending rt_sigtimedwait
        rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack pause alarm""",
    "time": """nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time getitimer setitimer
        timer_create timer_settime timer_gettime timer_getoverrun timer_delete""",
    "network": """socketpair bind connect listen accept accept4 getsockname getpeername sendto recvfrom
        sendmsg recvmsg sendmmsg recvmmsg setsockopt getsockopt shutdown""",
    "ipc": """shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl mq_open
        mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr""",
    "random": "getrandom",
}

# Syscalls the default profile allows only when the capability that guards them is kept.
SYSCALLS_BY_CAPABILITY = {
    "SYS_ADMIN": """mount umount2 pivot_root unshare setns fsopen fsconfig fsmount fspick open_tree move_mount
        mount_setattr quotactl quotactl_fd fanotify_init fanotify_mark lookup_dcookie perf_event_open bpf""",
    "DAC_READ_SEARCH": "open_by_handle_at name_to_handle_at",
    "SYS_BOOT": "reboot",  # not kexec_*, as in Docker's: a kernel a pod loaded would be the host's next
    "SYS_MODULE": "init_module finit_module delete_module",
    "SYS_TIME": "settimeofday clock_settime adjtimex clock_adjtime",
    "SYS_RAWIO": "iopl ioperm",
    "SYS_PACCT": "acct",
    "SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev",
    # As in Docker's profile: NUMA memory policies, even a process's own, are for SYS_NICE.
    "SYS_NICE": "get_mempolicy set_mempolicy set_mempolicy_home_node mbind move_pages migrate_pages",
    "SYS_TTY_CONFIG": "vhangup",
    "SYSLOG": "syslog",
    "PERFMON": "perf_event_open",
    "BPF": "bpf",
}

ACTIONS = {
    "SCMP_ACT_ALLOW": "allow",
    "SCMP_ACT_ERRNO": "errno",
    "SCMP_ACT_KILL": "kill_thread",
    "SCMP_ACT_KILL_THREAD": "kill_thread",
    "SCMP_ACT_KILL_PROCESS": "kill_process",
    "SCMP_ACT_TRAP": "trap",
    "SCMP_ACT_LOG": "log",
}
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT")
MASKED_EQ = "SCMP_CMP_MASKED_EQ"


class Condition(NamedTuple):
    argument: int  # which of the syscall's arguments (0-5) it tests
    operator: str  # an OPERATORS entry or MASKED_EQ
    value: int
    value_two: int = 0


class Rule(NamedTuple):
    names: tuple[str, ...]
    action: str  # a value of ACTIONS
    errno: int = EPERM
    conditions: tuple[Condition, ...] = ()


class Profile(NamedTuple):
    default_action: str
    default_errno: int = EPERM
    rules: tuple[Rule, ...] = ()


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# ioctl requests that type into a terminal: TIOCSTI pushes input, TIOCLINUX pastes a console's selection. On
# the caller's terminal (--scope), what the app typed would run in the user's shell once it ends.
TERMINAL_INPUT_IOCTLS = (0x5412, 0x541C)
WORD_BITS = 32  # an ioctl request is an unsigned int: the kernel ignores the upper half of the register
# socket() families refused as Docker's profile does: AF_ALG (the kernel's crypto API, CVE-2026-31431) and
# AF_VSOCK (a VM's host and other guests). socket()'s family is an int: matched on the low 32 bits too.
REFUSED_SOCKET_FAMILIES = (38, 40)


def allowed_unless(index: int, refused: Sequence[int]) -> tuple[Condition, ...]:
    """One-condition alternatives (any matching allows) that together match every 32-bit value of
    argument `index` but the refused ones, whatever its upper 32 bits. libseccomp takes one comparison
    per argument in a rule, and a not-equal one would compare all 64 bits, so: a value differing from
    all refused ones in a bit where those agree matches that bit; those agreeing in all such bits are
    listed one by one (2^k of them, k the bits where the refused values differ)."""
    differing = 0
    for value in refused:
        differing |= value ^ refused[0]
    alternatives = [
        Condition(index, MASKED_EQ, 1 << bit, ~refused[0] & (1 << bit))
        for bit in range(WORD_BITS)
        if not differing & (1 << bit)
    ]
    spread = [1 << bit for bit in range(WORD_BITS) if differing & (1 << bit)]
    for combination in range(1 << len(spread)):
        value = refused[0] & ~differing
        value |= sum(bit for position, bit in enumerate(spread) if combination & (1 << position))
        if value not in refused:
            alternatives.append(Condition(index, MASKED_EQ, (1 << WORD_BITS) - 1, value))
    return tuple(alternatives)


def default_profile(capabilities: Collection[str]) -> Profile:
    rules = [Rule(_names(" ".join(ALLOWED_SYSCALLS.values())), "allow")]
    rules += [Rule(_names(names), "allow") for cap, names in SYSCALLS_BY_CAPABILITY.items() if cap in capabilities]
    if "SYS_ADMIN" in capabilities:
        rules.append(Rule(("clone", "clone3"), "allow"))
    else:
        rules.append(Rule(("clone",), "allow", conditions=(Condition(0, MASKED_EQ, NAMESPACE_FLAGS, 0),)))
        # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc fall back to clone.
        rules.append(Rule(("clone3",), "errno", ENOSYS))
    rules += [
        Rule(("personality",), "allow", conditions=(Condition(0, "SCMP_CMP_EQ", value),))
        for value in PERSONALITY_VALUES
    ]
    ioctls = allowed_unless(1, TERMINAL_INPUT_IOCTLS)
    rules += [Rule(("ioctl",), "allow", conditions=(alternative,)) for alternative in ioctls]
    families = allowed_unless(0, REFUSED_SOCKET_FAMILIES)
    rules += [Rule(("socket",), "allow", conditions=(alternative,)) for alternative in families]
    return Profile("errno", EPERM, tuple(rules))


def parse_oci_profile(text: str, capabilities: Collection[str], origin: str) -> Profile:
    """An OCI runtime-spec seccomp object (also Docker's files: includes/excludes by capability are honoured)."""
    try:
        data = json.loads(text)
        default_action = _action(data["defaultAction"], origin)
        rules = tuple(_rule(entry, origin) for entry in data.get("syscalls") or () if _applies(entry, capabilities))
        return Profile(default_action, int(data.get("defaultErrnoRet", EPERM)), rules)
    except (ValueError, KeyError, TypeError) as error:
        raise SpecError(f"{origin}: not a valid seccomp profile ({type(error).__name__}: {error})") from None


def _action(name: str, origin: str) -> str:
    if name not in ACTIONS:
        raise SpecError(f"{origin}: unsupported seccomp action '{name}'", hint=f"use one of {', '.join(ACTIONS)}")
    return ACTIONS[name]


# Docker's profiles name architectures as Go does (amd64); uname(2) says x86_64.
GO_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def _applies(entry: Mapping[str, Any], capabilities: Collection[str]) -> bool:
    """Whether a rule of a Docker profile is for this container, as Docker decides: includes needs every
    capability and this architecture and kernel, excludes any one of its capabilities or this architecture.
    (A rule for another architecture can be a hole here: s390x's clone takes its flags second.)"""
    includes, excludes = entry.get("includes") or {}, entry.get("excludes") or {}
    held = {f"CAP_{name}" for name in capabilities}
    machine = os.uname().machine
    native = {machine, GO_ARCHITECTURES.get(machine, machine)}
    if not set(includes.get("caps") or ()) <= held or set(excludes.get("caps") or ()) & held:
        return False
    if includes.get("arches") and not native & set(includes["arches"]):
        return False
    if native & set(excludes.get("arches") or ()):
        return False
    return not includes.get("minKernel") or _kernel_version() >= _version(includes["minKernel"])


def _version(text: str) -> tuple[int, ...]:
    """'4.8' or '6.18.44-fc-v1098' as (4, 8) or (6, 18, 44)."""
    numbers = []
    for part in text.split("-", 1)[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _kernel_version() -> tuple[int, ...]:
    return _version(os.uname().release)


def _rule(entry: Mapping[str, Any], origin: str) -> Rule:
    names = tuple(entry.get("names") or ([entry["name"]] if "name" in entry else []))
    conditions = tuple(
        Condition(int(arg["index"]), _operator(arg["op"], origin), int(arg["value"]), int(arg.get("valueTwo", 0)))
        for arg in entry.get("args") or ()
    )
    return Rule(names, _action(entry["action"], origin), int(entry.get("errnoRet", EPERM)), conditions)


def _operator(name: str, origin: str) -> str:
    if name not in (*OPERATORS, MASKED_EQ):
        raise SpecError(f"{origin}: unsupported seccomp operator '{name}'")
    return name


def compiled_filter(choice: str, capabilities: Collection[str], cache: Path) -> Path | None:
    """The BPF program file for a profile, compiled into cache unless already there; None if unconfined.
    A cached program is found by its key alone: the profile is built (and compiled) only on a miss."""
    if choice == UNCONFINED:
        return None
    key, build = _profile_source(choice, capabilities)
    path = cache / f"{key}.bpf"
    if not path.exists():
        program = compile_profile(build())
        cache.mkdir(parents=True, exist_ok=True)
        write_atomically(path, program, mode=0o600)  # a racing run sees the whole program or none
    return path


def _profile_source(choice: str, capabilities: Collection[str]) -> tuple[str, Callable[[], Profile]]:
    """A cache key naming the profile `--seccomp` chose (default or a JSON file) with the capability
    set, and how to build it. The default profile is named by the set; a file by a hash of its text."""
    if choice == DEFAULT:
        return f"default-{PROFILE_FORMAT}-{caps.mask(capabilities):x}", lambda: default_profile(capabilities)
    try:
        text = Path(choice).read_text()
    except OSError as error:
        raise SpecError(f"cannot read seccomp profile '{choice}': {error.strerror}") from None
    import hashlib

    key = hashlib.sha256(json.dumps([PROFILE_FORMAT, text, sorted(capabilities)]).encode()).hexdigest()
    return key, lambda: parse_oci_profile(text, capabilities, choice)


def compile_profile(profile: Profile) -> bytes:
    """libseccomp's BPF for the profile, for this machine's native architecture."""
    import tempfile

    import pyseccomp

    def action_code(action: str, errno: int) -> int:
        codes = {
            "allow": pyseccomp.ALLOW,
            "errno": pyseccomp.ERRNO(errno),
            "kill_thread": pyseccomp.KILL_THREAD,
            "kill_process": pyseccomp.KILL_PROCESS,
            "trap": pyseccomp.TRAP,
            "log": pyseccomp.LOG,
        }
        return int(codes[action])

    operators = {name: getattr(pyseccomp, name.removeprefix("SCMP_CMP_")) for name in (*OPERATORS, MASKED_EQ)}
    default = action_code(profile.default_action, profile.default_errno)
    syscall_filter = pyseccomp.SyscallFilter(default)
    for rule in profile.rules:
        action = action_code(rule.action, rule.errno)
        if action == default:
            continue  # libseccomp refuses a rule that repeats the default action
        arguments = [
            pyseccomp.Arg(condition.argument, operators[condition.operator], condition.value, condition.value_two)
            for condition in rule.conditions
        ]
        for name in _known_syscalls(pyseccomp, rule.names):
            try:
                syscall_filter.add_rule(action, name, *arguments)
            except OSError as error:
                raise SpecError(f"seccomp rule for '{name}' rejected by libseccomp: {error.strerror}") from None
    with tempfile.TemporaryFile() as stream:
        syscall_filter.export_bpf(stream)
        stream.seek(0)
        return stream.read()


def _known_syscalls(pyseccomp: Any, names: Sequence[str]) -> list[str]:
    """Names this architecture has: profiles list syscalls of other architectures and newer kernels."""
    known = []
    for name in names:
        try:
            number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        except (OSError, ValueError):
            continue
        if number >= 0:
            known.append(name)
    return known
