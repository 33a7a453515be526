"""The fly stage1 with no process of its own: systemd chroots, binds and drops privileges itself.

For a --rootfs pod the unit's ExecStart= is the app, resolved by stage0, and
RootDirectory=, BindPaths=, User=, Environment=, Limit*= do what the Python
entry (entry.py) does for the other pods: the unit's MainPID is the app from
its first instruction, and no interpreter starts on the way (~35 ms and ~30 ms
of CPU per container).

systemd 252 applies the mount settings to every command of the unit, the
privileged `+` ExecStopPost= that records the exit status in the pod directory
included. RootDirectoryStartOnly= keeps that command at the host's root, but
its BindPaths= are still mounted there, at the host's paths: harmless for
/proc, /sys and /dev bound onto themselves, not for a volume, whose target
would be created (and covered) on the host. So pods with volumes, and pods
whose credentials, environment or mount points systemd cannot handle as the
entry does (native_obstacle), keep the entry.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from typing import TYPE_CHECKING

from sdrun.linux import syscalls as sc
from sdrun.systemd.propertytable import MS_REC, RLIM_INFINITY, UNRELOADABLE_CHARACTERS, prop
from stage1.fly.entry import HOST_API_FILESYSTEMS
from stage1.interface import UnitPlan

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.systemd.bus import Property
    from stage1.app import ResolvedApp

# What systemd puts in a service's environment beside Environment=: with User= it adds
# USER, LOGNAME, SHELL (from the host's passwd, not the container's); always INVOCATION_ID,
# JOURNAL_STREAM (output to the journal), SYSTEMD_EXEC_PID; and the manager's locale. The
# entry's app sees none of them: UnsetEnvironment= drops those the app does not set itself.
# LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID stay: they are the app's, as the entry hands them over.
SYSTEMD_ENVIRONMENT = (
    "USER", "LOGNAME", "SHELL", "INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID",
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY",
    "LC_MESSAGES", "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
)  # fmt: skip
# systemd refuses Environment= names that are not shell variable names; the entry passes any.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def native_obstacle(pod: Pod, app: ResolvedApp) -> str | None:
    """Why systemd alone cannot run this pod's app as the entry would, or None if it can."""
    if pod.spec.rootfs is None:
        return "an image pod's root is an overlay that the entry mounts"
    if not all(_is_plain_directory(pod.spec.rootfs + path) for path in HOST_API_FILESYSTEMS):
        return "systemd 252 would follow a link on /proc, /sys or /dev out of the root"
    if pod.spec.app.volumes:
        return "systemd 252 would mount the volumes at the host's paths for ExecStopPost="
    if not all(ENV_NAME.fullmatch(name) for name in app.env):
        return "systemd takes only shell variable names in Environment="
    if any(char in word for word in (app.executable, *app.argv) for char in UNRELOADABLE_CHARACTERS):
        return "systemd 252 would change the command's `$` or `;` at a daemon-reload"
    return _credentials_obstacle(app)


def _is_plain_directory(path: str) -> bool:
    """A mount point systemd can bind on. For one that is missing or a link (even one that stays
    in the root), 252 creates and mounts on what the link names seen from the host's root: a
    rootfs with /sys -> ../../../tmp/x would make /tmp/x on the host. The entry keeps them inside."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _credentials_obstacle(app: ResolvedApp) -> str | None:
    """systemd 252 looks User=, Group= and SupplementaryGroups= up in the host's user database,
    even numeric ones, and fails the unit (217/USER) for an id it does not know. For a gid
    other than 0 it also adds the host's groups of that user (initgroups(3)): they must be
    the container's already, or the app would gain groups the entry never gives it."""
    credentials = app.credentials
    try:
        host_name = pwd.getpwuid(credentials.uid).pw_name
        for gid in (credentials.gid, *credentials.groups):
            grp.getgrgid(gid)
    except KeyError:
        return "systemd 252 needs the app's uid and gids in the host's user database"
    if credentials.gid != 0 and not set(os.getgrouplist(host_name, credentials.gid)) <= {
        credentials.gid,
        *credentials.groups,
    }:
        return f"systemd would add the host's groups of user {host_name}"
    return None


def native_plan(rootfs: str, app: ResolvedApp) -> UnitPlan:
    """The unit runs the app itself, systemd having set up what the entry would."""
    credentials = app.credentials
    properties: list[Property] = [
        # Type=exec: the start job ends once the app's execve() succeeded, so `run -d` returns
        # with the app running; there is no entry left whose exit to wait for.
        prop("Type", "exec"),
        prop("RootDirectory", rootfs),
        prop("RootDirectoryStartOnly", True),  # ExecStopPost= must write to the host's pod directory
        prop("MountAPIVFS", False),  # the host's own /proc, /sys and /dev, bound as below, as the entry does
        prop("BindPaths", [[path, path, False, MS_REC] for path in HOST_API_FILESYSTEMS]),
        prop("User", str(credentials.uid)),
        prop("Group", str(credentials.gid)),
        # "-": the other commands, at the host's root, may not find it; the app's was checked in stage0.
        prop("WorkingDirectory", "-" + app.workdir),
        prop("Environment", [f"{name}={value}" for name, value in app.env.items()]),
        prop("UnsetEnvironment", [name for name in SYSTEMD_ENVIRONMENT if name not in app.env]),
        prop("IgnoreSIGPIPE", False),  # systemd's default ignores it: the app gets SIGPIPE, as from the entry
        *limit_properties(app.rlimits),
    ]
    if credentials.groups:  # none: systemd sets none (for gid 0 it asks no user database either)
        properties.append(prop("SupplementaryGroups", [str(gid) for gid in credentials.groups]))
    return UnitPlan(app.executable, app.argv, tuple(properties))


def limit_properties(rlimits: tuple[tuple[int, int, int], ...]) -> list[Property]:
    """LimitNOFILE= (the hard limit) and LimitNOFILESoft=, and so on, for each --ulimit."""
    properties: list[Property] = []
    for number, soft, hard in rlimits:
        name = "Limit" + sc.RLIMIT_NAMES[number].upper()
        properties += [prop(name, _dbus_rlimit(hard)), prop(name + "Soft", _dbus_rlimit(soft))]
    return properties


def _dbus_rlimit(value: int) -> int:
    return RLIM_INFINITY if value == sc.RLIM_INFINITY else value
