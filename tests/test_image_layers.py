"""The layer extractor against real tar streams: whiteouts in overlayfs's form, metadata kept,
and every way a layer could try to write outside its tree refused (with a fuzz test)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdrun.image.layers import LayerError, extract_layer
from tests.conftest import STATE_BASE
from tests.test_image_support import entry, tar_bytes

# On the harness's tmpfs: overlayfs (the harness's /tmp) refuses trusted.overlay.* xattrs.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="extraction keeps owners and makes whiteout devices: root")


@pytest.fixture
def outer() -> Iterator[Path]:
    directory = STATE_BASE / f"layers-{uuid.uuid4().hex[:8]}"
    (directory / "tree").mkdir(parents=True)
    (directory / "sentinel").write_text("untouched\n")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def extract(outer: Path, layer: bytes) -> Path:
    extract_layer(io.BytesIO(layer), str(outer / "tree"))
    return outer / "tree"


def assert_outside_untouched(outer: Path) -> None:
    assert sorted(os.listdir(outer)) == ["sentinel", "tree"]
    assert (outer / "sentinel").read_text() == "untouched\n"


def test_whiteouts_become_overlayfs_whiteouts(outer: Path) -> None:
    tree = extract(
        outer,
        tar_bytes(
            (entry("etc/.wh.passwd"), b""),
            (entry("var", tarfile.DIRTYPE, 0o755), b""),
            (entry("var/.wh..wh..opq"), b""),
            (entry("var/new"), b"new\n"),
            (entry(".wh..wh.plnk"), b""),
        ),
    )
    whiteout = os.lstat(tree / "etc/passwd")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(tree / "var", "trusted.overlay.opaque") == b"y"
    assert (tree / "var/new").read_text() == "new\n"
    assert not (tree / ".wh..wh.plnk").exists()


def test_metadata_and_hardlinks_are_kept(outer: Path) -> None:
    setuid = entry("bin/tool", mode=0o4755)
    setuid.uid, setuid.gid = 1000, 1001
    with_xattr = entry("bin/capable", mode=0o755)
    with_xattr.pax_headers = {"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.trusted.overlay.redirect": "/etc"}
    tree = extract(
        outer,
        tar_bytes(
            (setuid, b"#!/bin/sh\n"),
            (entry("bin/link", tarfile.LNKTYPE, linkname="bin/tool"), b""),
            (entry("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"), b""),
            (with_xattr, b"x"),
            (entry("run/fifo", tarfile.FIFOTYPE, 0o600), b""),
        ),
    )
    tool = os.lstat(tree / "bin/tool")
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid) == (0o4755, 1000, 1001)
    assert tool.st_mtime == 1_700_000_000
    assert os.lstat(tree / "bin/link").st_ino == tool.st_ino
    assert os.readlink(tree / "bin/sh") == "/bin/busybox"  # kept as written: it resolves inside the container
    assert os.getxattr(tree / "bin/capable", "user.note") == b"hello"
    assert "trusted.overlay.redirect" not in os.listxattr(tree / "bin/capable")  # forged overlay xattrs dropped
    assert stat.S_ISFIFO(os.lstat(tree / "run/fifo").st_mode)


@pytest.mark.parametrize(
    ("members", "complaint"),
    [
        ([(entry("/etc/passwd"), b"x")], "absolute path"),
        ([(entry("../escape"), b"x")], "'..'"),
        ([(entry("a/../../escape"), b"x")], "'..'"),
        ([(entry("link", tarfile.SYMTYPE, linkname=".."), b""), (entry("link/escape"), b"x")], "symlink"),
        ([(entry("link", tarfile.SYMTYPE, linkname="/"), b""), (entry("link/escape"), b"x")], "symlink"),
        ([(entry("hard", tarfile.LNKTYPE, linkname="../sentinel"), b"")], "'..'"),
        ([(entry("hard", tarfile.LNKTYPE, linkname="/etc/shadow"), b"")], "absolute path"),
        ([(entry("hard", tarfile.LNKTYPE, linkname="missing"), b"")], "does not contain"),
        ([(entry("file"), b"x"), (entry("file/below"), b"y")], "not a directory"),
        ([(entry("a/.wh..."), b"")], "names no entry"),  # hides `..`: would replace the tree's parent
        ([(entry(".wh..."), b"")], "names no entry"),
        ([(entry("a/.wh.."), b"")], "names no entry"),
    ],
)
def test_escapes_are_refused(outer: Path, members: list[tuple[tarfile.TarInfo, bytes]], complaint: str) -> None:
    with pytest.raises(LayerError, match=complaint):
        extract(outer, tar_bytes(*members))
    assert_outside_untouched(outer)


def test_device_nodes_are_made_as_the_layer_says(outer: Path) -> None:
    """As containers/storage does as root: the pod's unit keeps them closed (test_namespace)."""
    console, disk = entry("dev/console", tarfile.CHRTYPE, 0o620), entry("srv/disk", tarfile.BLKTYPE, 0o666)
    console.devmajor, console.devminor, disk.devmajor, disk.devminor = 5, 1, 8, 0
    extract(outer, tar_bytes((console, b""), (disk, b"")))
    made = os.lstat(outer / "tree/dev/console"), os.lstat(outer / "tree/srv/disk")
    assert [(stat.S_IFMT(node.st_mode), stat.S_IMODE(node.st_mode)) for node in made] == [
        (stat.S_IFCHR, 0o620),
        (stat.S_IFBLK, 0o666),
    ]
    assert [node.st_rdev for node in made] == [os.makedev(5, 1), os.makedev(8, 0)]
    assert_outside_untouched(outer)


def test_malformed_streams_are_refused(outer: Path) -> None:
    for garbage in (b"\x1f\x8b not gzip at all", b"\x28\xb5\x2f\xfd broken zstd", b"x" * 1000):
        with pytest.raises(LayerError):
            extract(outer, garbage)
    assert_outside_untouched(outer)


# --- fuzzing: whatever the tar says, nothing lands outside the tree ---

COMPONENTS = st.sampled_from(["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq", "sentinel", "tree", "/"])
NAMES = st.lists(COMPONENTS, min_size=1, max_size=4).map("/".join)
KINDS = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]
)
MEMBERS = st.lists(st.tuples(NAMES, KINDS, NAMES, st.integers(0, 0o7777)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=MEMBERS, cut=st.one_of(st.none(), st.integers(0, 4096)))
def test_fuzzed_layers_never_write_outside(
    outer: Path, members: list[tuple[str, bytes, str, int]], cut: int | None
) -> None:
    shutil.rmtree(outer / "tree")
    (outer / "tree").mkdir()
    layer = tar_bytes(*((entry(name, kind, mode, link), b"data") for name, kind, link, mode in members))
    if cut is not None:
        layer = layer[:cut]  # truncated streams too
    with contextlib.suppress(LayerError):
        extract(outer, layer)
    assert_outside_untouched(outer)
    for escaped in ("/a", "/b", "/.wh.a", outer.parent / "a", outer.parent / "b", outer.parent / "tree"):
        assert not os.path.lexists(escaped), f"{escaped} was written outside the tree"
    for directory, _, files in os.walk(outer / "tree"):
        for name in files:
            mode = os.lstat(os.path.join(directory, name))
            if stat.S_ISCHR(mode.st_mode):
                assert mode.st_rdev == 0  # the only device a layer may make: a whiteout


def test_archive_members_read_in_parallel_keep_their_own_bytes(tmp_path: Path) -> None:
    """Layers of an archive are read by parallel downloads: each member's reader must not move another's."""
    from concurrent.futures import ThreadPoolExecutor

    from sdrun.image.sources import _TarFiles

    contents = {f"layer{index}.tar": os.urandom(3 << 20) for index in range(4)}
    archive = tmp_path / "archive.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in contents.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    files = _TarFiles(archive, "test archive")

    def read_in_small_chunks(name: str) -> bytes:
        with files.open(name) as stream:
            return b"".join(iter(lambda: stream.read(4096), b""))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert dict(zip(contents, pool.map(read_in_small_chunks, contents), strict=True)) == contents
    with files.open("layer1.tar") as stream:
        stream.seek(1000)
        assert stream.read(10) == contents["layer1.tar"][1000:1010]
