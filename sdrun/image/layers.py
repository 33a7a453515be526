"""Layer tars to trees overlayfs stacks as they are: safe extraction, OCI whiteouts in overlay's own form.

Every name in a layer is looked up below the tree's root with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS): a member can neither climb out with '..' nor write through a
symlink, whether the tar made it or it was there before. The last component is always
created with *at() calls that never follow it. So whatever the tar says, nothing is
written outside the tree.

Whiteouts become what overlayfs itself writes: `.wh.NAME` a character device 0/0 named
NAME, `.wh..wh..opq` the trusted.overlay.opaque=y xattr on its directory. The trees are
then lowerdirs of a pod's overlay with no translation at mount time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from typing import IO, BinaryIO

from sdrun.errors import SdrunError
from sdrun.linux import syscalls as sc

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
# Only the kernel's overlayfs may write these: a layer forging them could redirect lookups.
FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
BENEATH = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_XDEV
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COPY_CHUNK = 1 << 20


class LayerError(SdrunError):
    """A layer that is malformed or tries to escape its tree."""


def member_parts(name: str, what: str) -> tuple[str, ...]:
    """A member name as path components below the tree's root; '.' and empty ones dropped."""
    if name.startswith("/"):
        raise LayerError(f"{what} '{name}' is an absolute path")
    if "\0" in name:
        raise LayerError(f"{what} {name!r} contains a NUL byte")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise LayerError(f"{what} '{name}' climbs out of the layer with '..'")
    return parts


class HashingReader:
    """Passes reads through and hashes them: the layer's diff_id as the tar is read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(COPY_CHUNK):
            pass
        return f"sha256:{self.hash.hexdigest()}"


@contextlib.contextmanager
def uncompressed(blob: BinaryIO) -> Iterator[IO[bytes]]:
    """The tar inside a layer blob, whatever it is compressed with (looked up from its first bytes).
    zstd goes through Debian's zstd binary: the standard library has no zstd."""
    magic = blob.read(4)
    blob.seek(0)
    if magic.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=blob, mode="rb") as stream:
            yield stream  # type: ignore[misc]  # typeshed's GzipFile is no IO[bytes], but reads as one
    elif magic == ZSTD_MAGIC:
        try:
            fd = blob.fileno()
            os.lseek(fd, 0, os.SEEK_SET)  # the buffered seek above may not have moved the fd itself
        except (AttributeError, io.UnsupportedOperation):
            fd = None
        try:
            process = subprocess.Popen(
                ["zstd", "-dcq"],
                stdin=subprocess.PIPE if fd is None else fd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise LayerError("a zstd layer needs the zstd program", hint="apt-get install zstd") from None
        assert process.stdout is not None and process.stderr is not None
        if fd is None:  # an in-memory blob: feed it from a thread while we read
            threading.Thread(target=_feed, args=(blob, process.stdin), daemon=True).start()
        try:
            yield process.stdout
            process.stdout.read()
        finally:
            process.stdout.close()
            error = process.stderr.read().decode(errors="replace").strip()
            process.stderr.close()
            if process.wait() != 0:
                raise LayerError(f"zstd could not decompress the layer: {error}")
    else:
        yield blob


def _feed(source: BinaryIO, sink: IO[bytes] | None) -> None:
    assert sink is not None
    with contextlib.suppress(BrokenPipeError), sink:
        shutil.copyfileobj(source, sink, COPY_CHUNK)


def extract_layer(blob: BinaryIO, tree: str) -> str:
    """Extract a layer blob into the directory tree (which must exist and be empty); return its diff_id."""
    try:
        with uncompressed(blob) as stream:
            reader = HashingReader(stream)
            root = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                Extractor(root).extract(reader)
            finally:
                os.close(root)
            return reader.drain()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, UnicodeError, ValueError) as error:
        if isinstance(error, OSError) and error.filename:
            raise LayerError(f"layer: {error.strerror}: {error.filename}") from None
        raise LayerError(f"malformed layer: {error}") from None


class Extractor:
    """Applies one tar stream to a tree, member by member, never leaving it."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self.directory_times: list[tuple[tuple[str, ...], int]] = []
        self._parent: tuple[tuple[str, ...], int] | None = None  # most members share the last one's parent

    def extract(self, stream: HashingReader) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as archive:  # type: ignore[call-overload]
                for member in archive:
                    self.apply(archive, member)
            for parts, mtime in reversed(self.directory_times):
                with self._opened(parts) as fd:
                    os.utime(f"/proc/self/fd/{fd}", ns=(mtime, mtime))
        finally:
            self._forget_parent()

    def apply(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_parts(member.name, "member")
        if not parts:
            return  # the tree's root itself: it keeps the mode the store gave it
        *parent_parts, name = parts
        parent = self.parent_fd(tuple(parent_parts), member.name)
        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, name, member.name)
        elif member.isdir():
            self._directory(parent, name, parts, member)
        elif member.isreg():
            self._file(archive, parent, name, member)
        elif member.issym():
            self._replace(parent, name, is_directory=False)
            os.symlink(member.linkname, name, dir_fd=parent)  # kept as written: it resolves in the container
            self._own_symlink(parent, name, member)
        elif member.islnk():
            self._hardlink(parent, name, member)
        elif member.isfifo():
            self._special(parent, name, member, stat.S_IFIFO, 0)
        elif member.ischr() or member.isblk():
            # As the layer says (a char 0/0 is a whiteout in overlay's own form), as containers/storage
            # does as root: mmdebstrap's and debootstrap's /dev has them. The pod's /dev is stage1's
            # anyway, and its unit's DevicePolicy=closed keeps any other node it finds closed.
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            self._special(parent, name, member, kind, os.makedev(member.devmajor, member.devminor))
        else:
            raise LayerError(f"member '{member.name}' has an unsupported type {member.type!r}")

    def _whiteout(self, parent: int, name: str, what: str) -> None:
        if name == OPAQUE_MARKER:
            os.setxattr(f"/proc/self/fd/{parent}", OPAQUE_XATTR, b"y")
        elif name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and the like): no meaning for overlayfs
        else:
            hidden = name.removeprefix(WHITEOUT_PREFIX)
            if hidden in ("", ".", ".."):  # `.wh...` would replace the parent's parent with a whiteout
                raise LayerError(f"whiteout '{what}' names no entry of its directory")
            self._replace(parent, hidden, is_directory=False)
            os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)

    # --- finding and making directories below the root ---

    def parent_fd(self, parts: tuple[str, ...], what: str) -> int:
        """An O_PATH fd of the directory parts, made if missing; refuses symlinks and non-directories."""
        if self._parent is not None and self._parent[0] == parts:
            return self._parent[1]
        self._forget_parent()
        fd = self._open_directory(parts, what)
        self._parent = (parts, fd)
        return fd

    def _forget_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _open_directory(self, parts: tuple[str, ...], what: str, *, create: bool = True) -> int:
        path = "/".join(parts) or "."
        try:
            return sc.openat2(self.root, path, os.O_PATH | os.O_DIRECTORY, BENEATH)
        except FileNotFoundError:
            if not create:
                raise LayerError(f"'{what}' is not in this layer") from None
        except OSError as error:
            raise self._lookup_error(error, what) from None
        fd = os.dup(self.root)
        try:
            for part in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = sc.openat2(fd, part, os.O_PATH | os.O_DIRECTORY, BENEATH)
                except OSError as error:
                    raise self._lookup_error(error, what) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _lookup_error(error: OSError, what: str) -> LayerError:
        if error.errno == 40:  # ELOOP: RESOLVE_NO_SYMLINKS met a symlink
            return LayerError(f"member '{what}' would be written through a symlink")
        if error.errno == 20:  # ENOTDIR
            return LayerError(f"member '{what}' would be written below a file that is not a directory")
        if error.errno == 18:  # EXDEV: RESOLVE_BENEATH refused to leave the tree
            return LayerError(f"member '{what}' escapes the layer")
        return LayerError(f"member '{what}': {os.strerror(error.errno or 0)}")

    @contextlib.contextmanager
    def _opened(self, parts: tuple[str, ...]) -> Iterator[int]:
        fd = sc.openat2(self.root, "/".join(parts) or ".", os.O_PATH | os.O_NOFOLLOW, BENEATH)
        try:
            yield fd
        finally:
            os.close(fd)

    def _replace(self, parent: int, name: str, *, is_directory: bool) -> bool:
        """Clear the way for a new entry; True if a directory that stays is there (dir over dir)."""
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(existing.st_mode):
            if is_directory:
                return True
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return False

    # --- entries ---

    def _directory(self, parent: int, name: str, parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
        if not self._replace(parent, name, is_directory=True):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._metadata(fd, member, set_times=False)
        finally:
            os.close(fd)
        self.directory_times.append((parts, int(member.mtime) * 1_000_000_000))

    def _file(self, archive: tarfile.TarFile, parent: int, name: str, member: tarfile.TarInfo) -> None:
        self._replace(parent, name, is_directory=False)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            source = archive.extractfile(member)
            assert source is not None
            with os.fdopen(os.dup(fd), "wb", closefd=True) as target:
                shutil.copyfileobj(source, target, COPY_CHUNK)
            self._metadata(fd, member, set_times=True)
        finally:
            os.close(fd)

    def _special(self, parent: int, name: str, member: tarfile.TarInfo, kind: int, device: int) -> None:
        self._replace(parent, name, is_directory=False)
        os.mknod(name, kind | 0o600, device, dir_fd=parent)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._metadata(fd, member, set_times=True, via_proc=True)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        *source_dir, source_name = member_parts(member.linkname, "hard link target") or ("",)
        if not source_name:
            raise LayerError(f"hard link '{member.name}' has no target")
        source_parent = self._open_directory(tuple(source_dir), member.linkname, create=False)
        try:
            try:
                os.stat(source_name, dir_fd=source_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerError(
                    f"hard link '{member.name}' points to '{member.linkname}', which this layer does not contain"
                ) from None
            if self._same_entry(parent, name, source_parent, source_name):
                return
            self._replace(parent, name, is_directory=False)
            os.link(source_name, name, src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_parent)

    @staticmethod
    def _same_entry(parent: int, name: str, other_parent: int, other_name: str) -> bool:
        try:
            mine = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return os.path.samestat(mine, os.stat(other_name, dir_fd=other_parent, follow_symlinks=False))

    @staticmethod
    def _own_symlink(parent: int, name: str, member: tarfile.TarInfo) -> None:
        if os.geteuid() == 0:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        mtime = int(member.mtime) * 1_000_000_000
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _metadata(self, fd: int, member: tarfile.TarInfo, *, set_times: bool, via_proc: bool = False) -> None:
        """Owner, then mode (chown clears set-id bits), then xattrs (chown clears file capabilities), then times."""
        target: int | str = f"/proc/self/fd/{fd}" if via_proc else fd
        if os.geteuid() == 0:
            os.chown(target, member.uid, member.gid)
        os.chmod(target, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if key.startswith(XATTR_PAX_PREFIX):
                attribute = key.removeprefix(XATTR_PAX_PREFIX)
                if not attribute.startswith(FORBIDDEN_XATTR_PREFIXES):
                    os.setxattr(target, attribute, value.encode("utf-8", "surrogateescape"))
        if set_times:
            mtime = int(member.mtime) * 1_000_000_000
            os.utime(target, ns=(mtime, mtime))
