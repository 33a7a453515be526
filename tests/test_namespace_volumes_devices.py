"""Volumes under --private-users (the host's ids as they map by default; idmapped with :idmap, or
chowned with :U, for the pod to write) and --device nodes:
the namespace stage1 against a real systemd, real user namespaces and the unit's device policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SDRUN, STATE_BASE, Sdrun, needs_systemd, unique_name, wait_for

pytestmark = needs_systemd
NS = ("--stage1", "namespace", "--net", "none")
RANGE = "300000:65536"
BASE = 300000


def shell(
    sdrun: Sdrun, rootfs: Path, script: str, *options: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ("run", "--rm", *NS, *options, "--rootfs", str(rootfs), "--", "sh", "-c", f"{script} 2>&1")
    return sdrun(*command, check=check)


@pytest.fixture
def data() -> Iterator[Path]:
    """A directory of host root's (0700, as a container root of another range could not enter), with
    a file of host root's and one of uid 1000's; on sdrun's state file system, which can be idmapped
    (the harness's /tmp is on an overlay, which cannot)."""
    data = STATE_BASE / f"volume-{uuid.uuid4().hex[:8]}"
    data.mkdir(mode=0o700)
    (data / "root-file").write_text("root\n")
    (data / "user-file").write_text("user\n")
    os.chown(data / "user-file", 1000, 1000)
    yield data
    shutil.rmtree(data)


def test_a_private_users_volume_is_not_the_pods_root_to_write_by_default(
    sdrun: Sdrun, rootfs: Path, data: Path
) -> None:
    """Not idmapped unless asked: host root's files are nobody's in the pod, and its root writes none of them."""
    data.chmod(0o755)  # to see its files: a 0700 directory of host root's the pod's root could not even enter
    script = ("stat -c %u /data /data/root-file /data/user-file; echo new > /data/new || echo refused;"
              " echo more >> /data/root-file || echo refused")  # fmt: skip
    output = shell(sdrun, rootfs, script, f"--private-users={RANGE}", "-v", f"{data}:/data").stdout
    assert output.split()[:3] == ["65534", "65534", "65534"]  # nobody: neither host uid is in the range
    assert output.splitlines()[3:] == ["sh: can't create /data/new: Permission denied", "refused",
                                       "sh: can't create /data/root-file: Permission denied", "refused"]  # fmt: skip
    assert not (data / "new").exists() and (data / "root-file").read_text() == "root\n"


def test_a_private_users_pods_root_writes_an_idmapped_volume_as_host_root(
    sdrun: Sdrun, rootfs: Path, data: Path
) -> None:
    script = "stat -c %u /data /data/root-file /data/user-file; echo new > /data/new && id -u"
    output = shell(sdrun, rootfs, script, f"--private-users={RANGE}", "-v", f"{data}:/data:idmap").stdout
    assert output.split() == ["0", "0", "1000", "0"]  # as on the host: not 65534 (nobody)
    assert (data / "new").read_text() == "new\n"
    assert (data / "new").stat().st_uid == 0 and (data / "new").stat().st_gid == 0  # container root's is host root's
    assert (data / "user-file").stat().st_uid == 1000  # nothing chowned


def test_a_read_only_volume_stays_read_only_under_private_users(sdrun: Sdrun, rootfs: Path, data: Path) -> None:
    script = "cat /data/root-file; echo x > /data/new || echo refused"
    output = shell(sdrun, rootfs, script, "--private-users", "-v", f"{data}:/data:ro,idmap").stdout
    assert output.splitlines()[0] == "root" and output.splitlines()[-1] == "refused"
    assert "Read-only file system" in output
    assert not (data / "new").exists()


def test_a_file_volume_can_be_idmapped_too(sdrun: Sdrun, rootfs: Path, data: Path) -> None:
    config = data / "app.conf"
    config.write_text("a\n")
    config.chmod(0o600)
    output = shell(sdrun, rootfs, "echo b >> /etc/app.conf && cat /etc/app.conf", "--private-users",
                   "-v", f"{config}:/etc/app.conf:idmap").stdout  # fmt: skip
    assert output == "a\nb\n" and config.read_text() == "a\nb\n"


def test_a_U_volume_is_chowned_to_the_pods_range_and_links_are_not_followed(
    sdrun: Sdrun, rootfs: Path, data: Path
) -> None:
    outside = data.with_name(f"{data.name}-outside")
    outside.write_text("host's\n")
    (data / "link").symlink_to(outside)  # a link out of the volume: the link changes, never its target
    (data / "dir-link").symlink_to(outside.parent)  # nor a directory's, which the walk must not enter
    (data / "sub").mkdir()
    (data / "sub" / "deep").write_text("deep\n")
    script = "stat -c %u /data /data/root-file /data/user-file /data/sub/deep; echo new > /data/new && id -u"
    output = shell(sdrun, rootfs, script, f"--private-users={RANGE}", "-v", f"{data}:/data:U").stdout
    assert output.split() == ["0", "0", "0", "0", "0"]
    for path in (data, data / "root-file", data / "user-file", data / "sub" / "deep", data / "new"):
        assert (path.stat().st_uid, path.stat().st_gid) == (BASE, BASE), path
    assert (data / "link").lstat().st_uid == BASE
    assert outside.stat().st_uid == 0 and outside.parent.stat().st_uid == 0
    assert (data / "dir-link").lstat().st_uid == BASE
    outside.unlink()


def test_a_U_volume_goes_to_the_apps_user(sdrun: Sdrun, rootfs: Path, data: Path) -> None:
    """Named through a link, as the bind follows it: the directory it names is chowned, not the link."""
    link = data.with_name(f"{data.name}-link")
    link.symlink_to(data)
    options = (f"--private-users={RANGE}", "--user", "1000:1000", "-v", f"{link}:/data:rw,U")
    try:
        output = shell(sdrun, rootfs, "echo new > /data/new && stat -c %u:%g /data/new", *options).stdout
    finally:
        link.unlink()
    assert output == "1000:1000\n"
    assert ((data / "new").stat().st_uid, (data / "root-file").stat().st_gid) == (BASE + 1000, BASE + 1000)


def test_a_host_users_pods_volumes_are_unchanged(sdrun: Sdrun, rootfs: Path, data: Path) -> None:
    output = shell(sdrun, rootfs, "stat -c %u /data/user-file; echo new > /data/new", "-v", f"{data}:/data").stdout
    assert output == "1000\n" and (data / "new").stat().st_uid == 0
    shell(sdrun, rootfs, "true", "--user", "1000", "-v", f"{data}:/data:U")
    assert (data / "new").stat().st_uid == 1000  # :U without a user namespace: the app's own uid


def test_status_shows_the_pods_uid_range(sdrun: Sdrun, rootfs: Path) -> None:
    name, auto = unique_name(), unique_name()
    sdrun("run", "-d", *NS, "--name", name, f"--private-users={RANGE}", "--rootfs", str(rootfs), "--", "sleep", "100")
    sdrun("run", "-d", *NS, "--name", auto, "--private-users", "--rootfs", str(rootfs), "--", "sleep", "100")
    try:
        assert f"private_users: {RANGE}" in sdrun("status", name).stdout.splitlines()
        shown = json.loads(sdrun("status", "--json", auto).stdout)["private_users"]
        inside, base, count = sdrun("enter", auto, "--", "cat", "/proc/self/uid_map").stdout.split()
        assert shown == f"{base}:{count}" and inside == "0"
    finally:
        sdrun("rm", "-f", name, auto)
    plain = unique_name()
    sdrun("run", *NS, "--name", plain, "--rootfs", str(rootfs), "--", "true")
    assert json.loads(sdrun("status", "--json", plain).stdout)["private_users"] is None


@pytest.mark.parametrize(
    ("options", "stage1", "message"),
    [
        ("ro,rw", "namespace", "OPTIONS ro or rw, and U or idmap"),
        ("Z", "namespace", "OPTIONS ro or rw, and U or idmap"),
        ("U,idmap", "namespace", "U (chown the source) and idmap (map its ids) exclude each other"),
        ("idmap", "namespace", "a volume's :idmap needs --private-users"),  # no user namespace to map to
        ("U", "fly", "a volume's :U needs the namespace stage1"),
        ("rw,idmap", "fly", "a volume's :idmap needs the namespace stage1"),
        ("idmap", "kvm", "a volume's :idmap does not apply to the kvm stage1"),
    ],
)
def test_bad_volume_options_are_refused(
    sdrun: Sdrun, rootfs: Path, tmp_path: Path, options: str, stage1: str, message: str
) -> None:
    volume = f"{tmp_path}:/data:{options}"
    command = ("run", "--rm", "--stage1", stage1, "-v", volume, "--rootfs", str(rootfs), "--", "true")
    result = sdrun(*command, check=False)
    assert result.returncode == 125 and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert sdrun.pods() == [] and sdrun.new_units() == set()


# --- --device ---


def device_allow(unit: str) -> set[str]:
    command = ["systemctl", "show", unit, "--property=DeviceAllow"]
    return set(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines())


@pytest.mark.parametrize("private_users", [(), ("--private-users",)], ids=["host-users", "private-users"])
def test_a_device_is_given_where_the_container_asks(sdrun: Sdrun, rootfs: Path, private_users: tuple[str, ...]) -> None:
    script = "stat -c '%F %t:%T' /dev/mynull; echo x > /dev/mynull && head -c 3 /dev/mynull | wc -c"
    output = shell(sdrun, rootfs, script, *private_users, "--device", "/dev/null:/dev/mynull").stdout
    assert output.splitlines() == ["character special file 1:3", "0"]


def test_only_the_devices_given_can_be_opened(sdrun: Sdrun, rootfs: Path) -> None:
    """MKNOD is a default capability: a node the app makes of a device it was not given stays closed."""
    if not Path("/dev/loop-control").exists():
        pytest.skip("no /dev/loop-control here")
    script = "ls /dev/loop-control; mknod /dev/lc c 10 237 && : < /dev/lc && echo opened"
    output = shell(sdrun, rootfs, script, check=False).stdout
    assert "No such file" in output.splitlines()[0] and "Operation not permitted" in output.splitlines()[1]
    assert "opened" not in output
    opened = shell(sdrun, rootfs, ": < /dev/loop-control && echo opened", "--device", "/dev/loop-control").stdout
    assert opened == "opened\n"
    # r only: read, but not written
    script = ": < /dev/loop-control && echo read; : <> /dev/loop-control && echo written"
    output = shell(sdrun, rootfs, script, "--device", "/dev/loop-control:r", check=False).stdout
    assert output.splitlines()[0] == "read" and "written" not in output
    name = unique_name()
    sdrun("run", "-d", *NS, "--name", name, "--device", "/dev/loop-control:/dev/lc:rw", "--rootfs", str(rootfs),
          "--", "sleep", "100")  # fmt: skip
    try:
        assert "DeviceAllow=/dev/loop-control rw" in device_allow(f"sdrun-{name}.service")
        assert sdrun("enter", name, "--", "sh", "-c", ": < /dev/lc && echo entered").stdout == "entered\n"
    finally:
        sdrun("rm", "-f", name)


def test_a_scope_pod_gets_its_devices(sdrun: Sdrun, rootfs: Path) -> None:
    command = ("run", "--rm", "--scope", *NS, "--device", "/dev/null:/dev/mynull", "--rootfs", str(rootfs))
    assert sdrun(*command, "--", "sh", "-c", "echo x > /dev/mynull && echo ok").stdout == "ok\n"


def test_a_device_and_a_volume_from_a_spec_file_and_an_installed_unit(
    sdrun: Sdrun, rootfs: Path, tmp_path: Path, data: Path
) -> None:
    spec, own = tmp_path / "pod.toml", data / "own"
    own.mkdir()
    spec.write_text(f'rootfs = "{rootfs}"\nnet = "none"\ndevice = ["/dev/null:/dev/mynull:rw"]\n'
                    f'volume = ["{own}:/data:U"]\nprivate_users = "{RANGE}"\n'
                    'exec = ["sh", "-c", "echo x > /dev/mynull && echo ok > /data/spec"]\n')  # fmt: skip
    sdrun("run", "--rm", "--spec", str(spec))
    assert (own / "spec").stat().st_uid == BASE
    name = unique_name()
    unit = f"sdrun-{name}.service"
    script = "echo x > /dev/mynull && echo new > /data/new && exec sleep 300"
    options = (*NS, f"--private-users={RANGE}", "--device", "/dev/null:/dev/mynull", "-v", f"{data}:/data:idmap")
    sdrun("install", "--now", name, *options, "--rootfs", str(rootfs), "--", "sh", "-c", script)
    try:
        wait_for((data / "new").exists)
        assert (data / "new").stat().st_uid == 0  # idmapped, as the unit's --volume=...:rw,idmap says
        unit_file = subprocess.run(["systemctl", "cat", unit], capture_output=True, text=True, check=True).stdout
        assert f"--volume={data}:/data:rw,idmap " in unit_file
        assert "DeviceAllow=/dev/null rwm" in device_allow(unit)
        assert f"private_users: {RANGE}" in sdrun("status", name).stdout.splitlines()
    finally:
        sdrun("uninstall", name, check=False)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("/etc/passwd", "is not a device node"),
        ("/dev/absent", "No such file or directory"),
        ("/dev/null:/dev/n:rwx", "PERMS of r, w and m"),
        ("dev/null", "must be an absolute path"),
        ("/dev/null:/proc/x", "/proc or /sys"),
    ],
)
def test_a_bad_device_is_one_line(sdrun: Sdrun, rootfs: Path, device: str, message: str) -> None:
    result = sdrun("run", "--rm", *NS, "--device", device, "--rootfs", str(rootfs), "--", "true", check=False)
    assert result.returncode == 125 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert sdrun.pods() == [] and sdrun.new_units() == set()


@pytest.mark.parametrize("stage1", ["fly", "kvm"])
def test_fly_and_kvm_refuse_a_device(sdrun: Sdrun, rootfs: Path, stage1: str) -> None:
    options = ("--net", "host") if stage1 == "fly" else ()
    command = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "--stage1", stage1, *options]
    result = subprocess.run([*command, "--device", "/dev/null", "--rootfs", str(rootfs), "--", "true"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 125 and "--device" in result.stderr, result.stderr
    assert sdrun.pods() == [] and sdrun.new_units() == set()


def test_a_volume_that_cannot_be_idmapped_is_one_line(sdrun: Sdrun, rootfs: Path, tmp_path: Path) -> None:
    """An overlay cannot be idmapped (the harness's /tmp is one): the pod fails to start, saying why."""
    command = ["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp_path)]
    found = subprocess.run(command, capture_output=True, text=True, check=True)
    if found.stdout.strip() != "overlay":
        pytest.skip(f"{tmp_path} is not on an overlay")
    result = shell(sdrun, rootfs, "true", "--private-users", "-v", f"{tmp_path}:/data:idmap", check=False)
    assert result.returncode == 125 and "drop idmap, or use U" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert sdrun.pods() == [] and sdrun.new_units() == set()
    shell(sdrun, rootfs, "true", "--private-users", "-v", f"{tmp_path}:/data")  # not idmapped: it starts
    chowned = shell(
        sdrun, rootfs, "touch /data/x && stat -c %u /data/x", "--private-users", "-v", f"{tmp_path}:/data:U"
    )
    assert chowned.stdout == "0\n"  # :U needs no idmapped mount
