"""Moving a process into a child cgroup of its own unit's, in every hierarchy systemd put it in.

A pod whose capabilities let it mount a cgroup filesystem (SYS_ADMIN, or a seccomp
profile that lets it make namespaces of its own) sees, through its cgroup namespace,
the cgroup that is its root there as writable files: were that the unit's own
cgroup, the pod could rewrite the unit's DevicePolicy= (cgroup v1's devices.allow)
and limits. So, for such a pod, the container's processes live in a child cgroup
(`payload`, as systemd-nspawn's), which becomes their cgroup namespace's root: what
the pod writes there stays within what the unit's cgroup, out of its reach, allows.

The in-unit entry imports this module: the standard library's os only.
"""

from __future__ import annotations

import os

PAYLOAD = "payload"


def cgroup_mounts(mountinfo: str) -> list[tuple[frozenset[str], str]]:
    """Each cgroup hierarchy's mount point, with the words that name it: a v1 mount's super
    options ({"rw", "cpu", "cpuacct"}, {"rw", "name=systemd"}), {""} for the unified (v2) one.
    Mounts of a hierarchy's subtree (a root other than "/") are not the hierarchy's: skipped."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[separator + 3]
        if fields[3] == "/" and fstype in ("cgroup", "cgroup2"):
            mounts.append((frozenset(options.split(",")) if fstype == "cgroup" else frozenset({""}), fields[4]))
    return mounts


def mount_point(mounts: list[tuple[frozenset[str], str]], controllers: str) -> str | None:
    """Where the hierarchy that /proc/PID/cgroup names by controllers ("cpu,cpuacct", "name=systemd",
    "" for v2) is mounted, if it is."""
    wanted = set(controllers.split(","))
    return next((where for words, where in mounts if wanted <= words), None)


def enter_payload_cgroups() -> list[str]:
    """Move the calling process into PAYLOAD under its cgroup, in each hierarchy where that cgroup
    is not the root (those systemd placed it in; the others the pod could not loosen anything
    of). Returns the payload directories. Raises OSError: a pod that asked for this must not run
    in its unit's own cgroup."""
    with open("/proc/self/mountinfo") as stream:
        mounts = cgroup_mounts(stream.read())
    with open("/proc/self/cgroup") as stream:
        memberships = [line.rstrip("\n").split(":", 2)[1:] for line in stream]
    entered = []
    for controllers, path in memberships:
        where = mount_point(mounts, controllers)
        if path == "/" or path.startswith("/..") or where is None:
            continue  # the root, or above our cgroup namespace's: not a cgroup systemd made for us
        directory = f"{where}{path}/{PAYLOAD}"
        try:  # noqa: SIM105 - contextlib.suppress: an import every container start would pay
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass  # left by an earlier run of the same unit: systemd removes it with the unit's
        if "cpuset" in controllers.split(","):
            _inherit_cpuset(f"{where}{path}", directory)
        with open(f"{directory}/cgroup.procs", "w") as stream:
            stream.write("0")
        entered.append(directory)
    return entered


def _inherit_cpuset(parent: str, child: str) -> None:
    """A new cgroup v1 cpuset has no CPUs and no memory nodes (unless clone_children), and takes no
    process then: give it its parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(f"{child}/{name}") as stream:
            if stream.read().strip():
                continue
        with open(f"{parent}/{name}") as source, open(f"{child}/{name}", "w") as target:
            target.write(source.read())
