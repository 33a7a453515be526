"""The namespace stage1's pure logic: capability sets, seccomp profiles, the container plan, spec round trips."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import time
from pathlib import Path

import pytest

from sdrun.errors import SpecError
from sdrun.linux import caps, cgroups, seccomp
from sdrun.linux import syscalls as sc
from sdrun.linux.inroot import make_mount_point
from sdrun.linux.mounts import MountOperation
from sdrun.linux.rootfs import Credentials
from sdrun.pod import Pod
from sdrun.spec import Isolation, PodSpec, check_settings
from sdrun.specbuild import build_spec
from stage1 import sealed
from stage1.app import ResolvedApp
from stage1.interface import entry_command
from stage1.namespace.container import container_plan, parse_tmpfs, user_namespace_of


def make_pod(tmp_path: Path, **settings: object) -> Pod:
    raw = {"rootfs": str(tmp_path), **settings}
    spec = build_spec(check_settings(raw, "test"), default_name="p", default_stage1="namespace")
    return Pod("0b8e3a8e-5a5f-4c1e-9f4e-2d1c7a3b9e10", tmp_path / "pod", spec, time.time())


def test_capabilities_default_add_drop_and_all() -> None:
    assert len(caps.DEFAULT_CAPABILITIES) == 11
    assert not {"NET_RAW", "MKNOD", "AUDIT_WRITE"} & caps.DEFAULT_CAPABILITIES  # podman's set
    assert caps.resolve(["cap_net_admin"], ["CHOWN"]) == (caps.DEFAULT_CAPABILITIES | {"NET_ADMIN"}) - {"CHOWN"}
    assert caps.resolve([], ["ALL"]) == frozenset()
    assert caps.resolve(["NET_RAW"], ["all"]) == {"NET_RAW"}
    assert caps.resolve(["ALL"]) == frozenset(caps.CAPABILITIES)
    assert caps.mask(["CHOWN", "KILL"]) == 0b100001
    with pytest.raises(SpecError, match="unknown capability 'FLY'"):
        caps.resolve(["FLY"])


def test_tmpfs_options() -> None:
    plain = parse_tmpfs("/scratch")
    assert (plain.target, plain.flags, plain.options) == (
        "/scratch",
        sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
        "mode=1777",
    )
    custom = parse_tmpfs("/run:exec,ro,size=1m")
    assert custom.flags == sc.MS_NOSUID | sc.MS_NODEV | sc.MS_RDONLY
    assert custom.options == "size=1m"


def test_default_seccomp_profile_follows_capabilities() -> None:
    def allowed(profile: seccomp.Profile) -> set[str]:
        return {name for rule in profile.rules if rule.action == "allow" for name in rule.names}

    default = seccomp.default_profile(caps.DEFAULT_CAPABILITIES)
    assert default.default_action == "errno" and default.default_errno == seccomp.EPERM
    assert {"read", "execve", "clone", "socket"} <= allowed(default)
    assert not {"mount", "unshare", "setns", "kexec_load", "init_module", "bpf", "reboot"} & allowed(default)
    assert not {"pidfd_getfd", "mbind", "set_mempolicy", "get_mempolicy"} & allowed(default)
    admin = seccomp.default_profile(caps.DEFAULT_CAPABILITIES | {"SYS_ADMIN"})
    assert {"mount", "unshare", "setns", "clone3"} <= allowed(admin)
    assert "pidfd_getfd" in allowed(seccomp.default_profile(caps.DEFAULT_CAPABILITIES | {"SYS_PTRACE"}))
    assert "mbind" in allowed(seccomp.default_profile(caps.DEFAULT_CAPABILITIES | {"SYS_NICE"}))


def test_socket_families_are_allowed_but_af_alg_and_af_vsock_whatever_the_upper_bits() -> None:
    alternatives = seccomp.allowed_unless(0, seccomp.REFUSED_SOCKET_FAMILIES)
    for low in [*range(64), 0xFFFFFFFF]:
        for high in (0, 1, 0xFFFFFFFF):
            family = high << 32 | low
            allowed = any(family & condition.value == condition.value_two for condition in alternatives)
            assert allowed == (low not in (38, 40)), hex(family)


def test_oci_profile_with_capability_conditions_and_arguments() -> None:
    text = json.dumps(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
                },
            ],
        }
    )
    profile = seccomp.parse_oci_profile(text, caps.DEFAULT_CAPABILITIES, "p.json")
    assert profile.default_errno == 38
    assert [rule.names for rule in profile.rules] == [("read", "write"), ("personality",)]
    assert profile.rules[1].conditions == (seccomp.Condition(0, "SCMP_CMP_EQ", 8),)
    assert len(seccomp.compile_profile(profile)) % 8 == 0  # whole BPF instructions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not a valid seccomp profile"),
        ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "unsupported seccomp action"),
        ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_BOGUS"}]}', "action"),
    ],
)
def test_bad_oci_profiles_are_spec_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        seccomp.parse_oci_profile(text, (), "p.json")


def test_compiled_filters_are_cached_per_profile_and_capability_set(tmp_path: Path) -> None:
    first = seccomp.compiled_filter("default", caps.DEFAULT_CAPABILITIES, tmp_path)
    again = seccomp.compiled_filter("default", caps.DEFAULT_CAPABILITIES, tmp_path)
    other = seccomp.compiled_filter("default", caps.DEFAULT_CAPABILITIES | {"SYS_ADMIN"}, tmp_path)
    assert first is not None and first == again and first != other
    assert seccomp.compiled_filter("unconfined", (), tmp_path) is None
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".bpf", ".bpf"]


def test_isolation_survives_the_manifest_round_trip(tmp_path: Path) -> None:
    pod = make_pod(tmp_path, cap_add=["NET_ADMIN"], tmpfs=["/run:size=1m"], private_users="auto", init=True)
    assert pod.spec.isolation == Isolation(
        cap_add=("NET_ADMIN",), tmpfs=("/run:size=1m",), private_users="auto", init=True
    )
    assert PodSpec.from_json(json.loads(json.dumps(pod.spec.to_json()))) == pod.spec


@pytest.mark.parametrize("value", ["0:65536", "x:1", "100000", "100000:0"])
def test_bad_private_users(tmp_path: Path, value: str) -> None:
    with pytest.raises(SpecError):
        user_namespace_of(make_pod(tmp_path, private_users=value))


def test_auto_user_namespace_is_stable_and_clear_of_the_host_range(tmp_path: Path) -> None:
    pod = make_pod(tmp_path, private_users="auto")
    first = user_namespace_of(pod)
    assert first is not None and first == user_namespace_of(pod)
    assert first.base >= 0x80000 and first.size == 65536 and first.map == f"0 {first.base} 65536\n"


def test_plan_lists_runc_masks_the_minimal_dev_and_volumes_in_order(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    volume.mkdir()
    plan = container_plan(make_pod(tmp_path, volume=[f"{volume}:/data:ro"], read_only=True, hostname="h"))
    steps = [operation.describe() for operation in plan.mounts + plan.lockdown]
    assert steps[0] == "mount proc on /proc"
    assert "mount devpts on /dev/pts (newinstance,ptmxmode=0666,mode=0620,gid=5)" in steps
    assert f"bind {volume} on /data (read-only)" in steps
    assert "mask /proc/kcore" in steps and "make /proc/sys read-only" in steps
    assert steps[-1] == "make the root read-only"
    assert plan.hostname == "h" and plan.capabilities == caps.DEFAULT_CAPABILITIES
    assert not plan.host_network and plan.user_namespace is None


def test_the_entry_plan_carries_every_mount_and_the_app_as_plain_values(tmp_path: Path) -> None:
    """stage0 writes the plan with marshal; the entry rebuilds the same mount operations from it."""
    pod = make_pod(tmp_path, tmpfs=["/run:size=1m"], cap_drop=["ALL"], cap_add=["KILL"], init=True)
    plan = container_plan(pod)
    app = ResolvedApp(
        "/bin/sh", ("sh", "-c", "true"), {"HOME": "/home", "PATH": "/bin"}, "/", Credentials(1000, 100, (10,), "/home")
    )
    entry = marshal.loads(marshal.dumps(dict(plan.entry_plan(app))))
    rebuilt = [MountOperation.from_plan(item) for item in entry["mounts"] + entry["lockdown"]]
    assert rebuilt == list(plan.mounts + plan.lockdown)
    assert entry["capabilities"] == caps.mask(["KILL"]) == 1 << 5
    assert ResolvedApp.from_plan_fields(entry["app"]) == app
    assert entry["root"] == "rootfs" and entry["overlay"] == (
        f"lowerdir=lower,upperdir={pod.dir}/stage1/upper,workdir={pod.dir}/stage1/work"
    )


def test_the_entry_imports_only_what_it_needs(tmp_path: Path) -> None:
    """Every container start pays for the in-unit entry's imports: none of the heavy ones. Started as
    the unit starts it (no arguments: it exits with its usage line once everything is imported), from
    the sealed interpreter, whose standard library is the view's."""
    pod = Pod("0" * 32, tmp_path, PodSpec("p", "namespace", rootfs="/"), 0.0)
    executable, argv = entry_command("stage1.namespace", pod)
    assert executable == sealed.ensure()
    command = [executable, "-X", "importtime", *argv[1 : argv.index("run")]]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    modules = {line.rsplit("|", 1)[-1].strip() for line in finished.stderr.splitlines() if "|" in line}
    assert "stage1.namespace.entry" in modules and "usage:" in finished.stderr
    heavy = {"dataclasses", "typing", "pathlib", "json", "re", "enum", "socket", "contextlib", "collections"}
    assert not (heavy | {"site", "runpy", "sdrun.spec", "sdrun.pod", "stage1.app"}) & modules


def test_ioctls_are_allowed_but_the_terminal_input_ones_whatever_the_upper_bits() -> None:
    refused = seccomp.TERMINAL_INPUT_IOCTLS
    alternatives = seccomp.allowed_unless(1, refused)
    assert {condition.operator for condition in alternatives} == {seccomp.MASKED_EQ}

    def allowed(request: int) -> bool:
        return any(request & condition.value == condition.value_two for condition in alternatives)

    for low in [*range(0x5400, 0x5500), 0, 0x80045430, 0xFFFFFFFF]:
        for high in (0, 1, 0xFFFFFFFF):
            assert allowed(high << 32 | low) == (low not in refused), hex(high << 32 | low)


def test_mount_points_are_made_through_dangling_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "dev").symlink_to("/host/dev")  # absolute: the host's /host/dev must stay untouched
    (root / "up").symlink_to("../../../../made")  # `..` above the root stays at the root
    (root / "etc" / "resolv.conf").symlink_to("../run/resolve/stub.conf")
    (root / "loop").symlink_to("/loop/inner")
    make_mount_point(root, "/dev/pts", directory=True)
    make_mount_point(root, "/up/deeper", directory=True)
    make_mount_point(root, "/etc/resolv.conf", directory=False)
    assert (root / "host" / "dev" / "pts").is_dir() and not Path("/host/dev/pts").exists()
    assert (root / "made" / "deeper").is_dir()
    assert (root / "run" / "resolve" / "stub.conf").is_file()
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        make_mount_point(root, "/loop", directory=True)


def test_docker_profile_rules_for_other_architectures_and_kernels_are_left_out() -> None:
    """As Docker decides: s390x's clone (flags in its second argument) must not allow ours."""
    machine = os.uname().machine
    native = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    rules = [
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390", "s390x"]},
         "args": [{"index": 1, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": [native, "x32"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "999.1"}},
        {"names": ["uname"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": [native]}},
    ]  # fmt: skip
    text = json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules})
    profile = seccomp.parse_oci_profile(text, caps.DEFAULT_CAPABILITIES, "docker.json")
    assert [rule.names for rule in profile.rules] == [("arch_prctl",), ("ptrace",)]


def test_cgroup_hierarchies_are_found_by_their_controllers() -> None:
    mountinfo = "\n".join(
        [
            "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755",
            "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
            "32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd",
            "35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct",
            "36 30 0:32 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices",
            "90 20 0:32 /machine.slice /elsewhere rw - cgroup cgroup rw,devices",  # a subtree: not the hierarchy's
        ]
    )
    mounts = cgroups.cgroup_mounts(mountinfo)
    assert cgroups.mount_point(mounts, "") == "/sys/fs/cgroup/unified"
    assert cgroups.mount_point(mounts, "name=systemd") == "/sys/fs/cgroup/systemd"
    assert cgroups.mount_point(mounts, "cpu,cpuacct") == "/sys/fs/cgroup/cpu,cpuacct"
    assert cgroups.mount_point(mounts, "devices") == "/sys/fs/cgroup/devices"
    assert cgroups.mount_point(mounts, "freezer") is None


def test_pods_that_may_mount_cgroups_run_in_a_payload_cgroup(tmp_path: Path) -> None:
    assert not container_plan(make_pod(tmp_path)).payload_cgroup
    assert container_plan(make_pod(tmp_path, cap_add=["SYS_ADMIN"])).payload_cgroup
    assert container_plan(make_pod(tmp_path, seccomp="unconfined")).payload_cgroup
