"""A pod's network tear-down as its unit's ExecStopPost= runs it: `python -S -P unplug_entry.py teardown POD_DIR`.

Every pod on a network pays for this process at its end, so it imports the
standard library's C modules and nothing that pulls in pathlib, re or
subprocess: ~10 ms from exec to work where `python -m sdrun.net.hook` took
~40. It needs no lease parser and no nft command builder either: the set-up
writes, beside the lease, a tear-down plan (PLAN_VERSION: its veth, its
namespace, its lines of the network's hosts file and the nft commands that
remove its elements), made by sdrun.net.pod from the lease. A lease without a
plan (a crash between the two writes, a lease from before plans) is undone by
sdrun.net.pod as `sdrun gc` does.

The kernel's part runs at once: the nft transaction in its own process while
this one deletes the veth pair, each waiting for an RCU grace period (nft's
socket closes only once its deletions are freed; the veth's deletion waits
for the removal of both ends), so the two waits overlap (~20 ms, not ~35).
The unit runs unplug_entry.py by path, which imports this module with sdrun.net
as a bare package, so that sdrun.net's __init__ (pathlib, ~10 ms) never runs.
"""

from __future__ import annotations

import _socket  # socket's C module: socket.py's own imports (enum...) would cost every tear-down
import fcntl
import os
import sys

from sdrun.errors import EXIT_RUNTIME_ERROR, SdrunError, describe
from sdrun.linux import syscalls as sc
from sdrun.net import rtnl

PLAN_VERSION = "sdrun-teardown-plan 1"
NETNS_DIR = "/run/netns"  # sdrun.net.NETNS_DIR, without pathlib
TEARDOWN_BUDGET_USEC = 30_000_000
USAGE = "usage: python -S -P unplug_entry.py teardown POD_DIR\n"


class Plan:
    """What a pod's tear-down undoes, as its set-up wrote it down: one `KEY<TAB>VALUE` per line."""

    def __init__(self, veth: str, netns: str, hosts_lines: list[str], nft_commands: str) -> None:
        self.veth = veth
        self.netns = netns
        self.hosts_lines = [line if line.endswith("\n") else line + "\n" for line in hosts_lines]
        self.nft_commands = nft_commands

    def to_text(self) -> str:
        lines = [PLAN_VERSION, f"veth\t{self.veth}", f"netns\t{self.netns}"]
        lines += [f"host\t{line.rstrip(chr(10))}" for line in self.hosts_lines]
        lines += [f"nft\t{command}" for command in self.nft_commands.splitlines()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Plan | None:
        """None unless it is a whole plan of this version (a torn or foreign file is no plan)."""
        lines = text.splitlines()
        if not lines or lines[0] != PLAN_VERSION or not text.endswith("\n"):
            return None
        fields: dict[str, list[str]] = {"veth": [], "netns": [], "host": [], "nft": []}
        for line in lines[1:]:
            key, tab, value = line.partition("\t")
            if not tab or key not in fields:
                return None
            fields[key].append(value)
        if len(fields["veth"]) != 1 or len(fields["netns"]) != 1:
            return None
        nft_commands = "".join(command + "\n" for command in fields["nft"])
        return cls(fields["veth"][0], fields["netns"][0], fields["host"], nft_commands)


# sdrun.paths builds these too, as Paths; here as strings (no pathlib on this path), and a test
# (tests/test_net.py) checks that the two agree.
def network_dir(root: str, network: str) -> str:
    return os.path.join(root, "net", network)


def lease_file(root: str, network: str, pod_uuid: str) -> str:
    return os.path.join(network_dir(root, network), "leases", pod_uuid)


def plan_file(root: str, network: str, pod_uuid: str) -> str:
    """Beside the lease, a dot-file: lease listings skip it."""
    return os.path.join(network_dir(root, network), "leases", f".{pod_uuid}.plan")


def read_plan(root: str, network: str, pod_uuid: str) -> Plan | None:
    try:
        with open(plan_file(root, network, pod_uuid), encoding="utf-8") as stream:
            return Plan.from_text(stream.read())
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def remove_plan(root: str, network: str, pod_uuid: str) -> None:
    _unlink(plan_file(root, network, pod_uuid))


def _unlink(path: str) -> None:
    """Remove a file, gone already or not (without contextlib: an import this process spares)."""
    try:  # noqa: SIM105
        os.unlink(path)
    except FileNotFoundError:
        pass


def rewrite_in_place(path: str | os.PathLike[str], text: str) -> None:
    """Replace a file's content keeping its inode: pods have it bind-mounted, and a rename
    would leave them the old file. Written first, truncated after: a reader never sees it empty."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != "teardown":
        sys.stderr.write(USAGE)
        return EXIT_RUNTIME_ERROR
    extend_timeout(TEARDOWN_BUDGET_USEC)
    try:
        teardown(argv[2])
    except (SdrunError, OSError) as error:
        sys.stderr.write(f"sdrun network: {describe(error)}\n")
        return EXIT_RUNTIME_ERROR
    return 0


def extend_timeout(usec: int) -> None:
    """Ask systemd for usec more before it kills this command (the unit's NotifyAccess= must
    admit its control processes: `all` or `exec`); nothing outside a unit that has a notify socket."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    notify = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        notify.sendto(f"EXTEND_TIMEOUT_USEC={usec}".encode(), "\0" + address[1:] if address[0] == "@" else address)
    except OSError as error:  # no harm but a shorter deadline: say so in the unit's journal
        sys.stderr.write(f"sdrun network: cannot ask systemd for time to tear down: {error.strerror}\n")
    finally:
        notify.close()


def teardown(pod_dir: str) -> None:
    """Undo the network of the pod whose directory is pod_dir (<root>/pods/<uuid>), on whichever
    network holds its lease. Works from the lease alone: the directory may be gone (a detached --rm)."""
    pod_dir = os.path.abspath(pod_dir)
    root, pod_uuid = os.path.dirname(os.path.dirname(pod_dir)), os.path.basename(pod_dir)
    try:
        networks = sorted(os.listdir(os.path.join(root, "net")))
    except (FileNotFoundError, NotADirectoryError):
        return
    for network in networks:
        if os.path.exists(lease_file(root, network, pod_uuid)):
            undo(root, network, pod_uuid)


def undo(root: str, network: str, pod_uuid: str) -> bool:
    """Undo one pod's network from its plan, holding its lease's flock (as sdrun.net.pod.teardown
    does: a concurrent tear-down of the same pod waits, then finds the lease gone). True if there
    was anything to undo."""
    try:
        fd = os.open(lease_file(root, network, pod_uuid), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not os.fstat(fd).st_nlink:  # another tear-down of this pod got there first
            return False
        plan = read_plan(root, network, pod_uuid)
        if plan is None:  # no plan to follow: the full tear-down, from the lease
            _load_sdrun_net()
            from pathlib import Path

            from sdrun.net.pod import undo_held_lease

            return undo_held_lease(Path(root), network, pod_uuid)
        release_objects(plan.nft_commands, plan.veth, plan.netns)
        forget(root, network, pod_uuid, plan.hosts_lines)
        return True
    finally:
        os.close(fd)


def release_objects(nft_commands: str, veth: str, netns: str) -> None:
    """Remove a pod's nft elements (one transaction), its veth pair and its namespace's name,
    the nft transaction and the veth's deletion at once (see the module's docstring). Whatever
    fails, all are tried; the lease, which names them, is kept for a later tear-down."""
    nft = NftRun(nft_commands)
    try:
        delete_veth(veth)
        remove_netns(netns)
    finally:
        nft.wait()


def delete_veth(name: str) -> None:
    """Delete the pod's veth pair (a veth takes its peer along), gone already or not. Deleted
    rather than left to go with the namespace: the kernel destroys a namespace tens of milliseconds
    after its last user (longer when many go at once), and never while a process elsewhere holds
    it open; until then the pair would stay on the bridge, its pod's address with it."""
    try:
        rtnl.delete_link(name)
    except OSError as error:
        raise SdrunError(describe(error)) from None  # "delete interface: <reason>: <name>"


def remove_netns(name: str) -> None:
    """Unmount and remove a named network namespace (as `ip netns delete`); the kernel frees it,
    and any interface left in it, once no process uses it."""
    path = os.path.join(NETNS_DIR, name)
    try:  # noqa: SIM105 - not mounted (any more): nothing to unmount
        sc.umount2(path, sc.MNT_DETACH)
    except OSError:
        pass
    _unlink(path)


class NftRun:
    """`nft -f -` fed commands, started now and waited for later; without subprocess (~10 ms of imports)."""

    def __init__(self, commands: str) -> None:
        self.pid = 0
        self.errors = -1
        if not commands:
            return
        commands_read, commands_write = os.pipe2(os.O_CLOEXEC)
        errors_read, errors_write = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = os.posix_spawnp(
                "nft",
                ["nft", "-f", "-"],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, commands_read, 0),
                    (os.POSIX_SPAWN_DUP2, errors_write, 1),
                    (os.POSIX_SPAWN_DUP2, errors_write, 2),
                ],
            )
        except FileNotFoundError:
            os.close(errors_read)
            raise SdrunError(
                "nft is not installed: networking needs nftables", hint="apt-get install nftables"
            ) from None
        finally:
            os.close(commands_read)
            os.close(errors_write)
        self.errors = errors_read
        try:
            os.write(commands_write, commands.encode())  # a few lines: well within a pipe's buffer
        except BrokenPipeError:  # nft died before reading: its status says why
            pass
        finally:
            os.close(commands_write)

    def wait(self) -> None:
        """Wait for nft; raise SdrunError with its first line if the transaction failed."""
        if not self.pid:
            return
        chunks = []
        try:
            while chunk := os.read(self.errors, 65536):
                chunks.append(chunk)
        finally:
            os.close(self.errors)
        _, status = os.waitpid(self.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            lines = b"".join(chunks).decode(errors="replace").splitlines()
            raise SdrunError(f"nft: {next((line for line in lines if line.strip()), 'failed')}")


def forget(root: str, network: str, pod_uuid: str, hosts_lines: list[str]) -> None:
    """Under the networking lock: remove the plan, the pod's own hosts file and its lease (last:
    a crash before leaves a lease the next tear-down undoes), and the pod's lines from the
    network's hosts file and from each copy a pod with --add-host has (the network's lines, then
    its own). A copy that does not start with the network's file (a crash between two rewrites)
    has the network's files rewritten from the leases, as a set-up does."""
    directory = network_dir(root, network)
    with networking_lock(root):
        remove_plan(root, network, pod_uuid)
        _unlink(os.path.join(directory, f"hosts.{pod_uuid}"))
        _unlink(lease_file(root, network, pod_uuid))
        if not drop_hosts_lines(directory, hosts_lines):
            _load_sdrun_net()
            from pathlib import Path

            from sdrun.net import ipam

            ipam.update_network_files(Path(root), network)


def drop_hosts_lines(directory: str, hosts_lines: list[str]) -> bool:
    """Remove hosts_lines from the network's hosts file and its pods' copies; False if the files
    are not as the last rewrite left them (nothing is then changed)."""
    hosts = os.path.join(directory, "hosts")
    try:
        with open(hosts, encoding="utf-8") as stream:
            shared = stream.read()
        copies = {}
        for name in os.listdir(directory):
            if name.startswith("hosts."):  # hosts.<uuid>: a pod's copy
                with open(os.path.join(directory, name), encoding="utf-8") as stream:
                    copies[name] = stream.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return False
    if not all(text.startswith(shared) for text in copies.values()):
        return False
    leaving = set(hosts_lines)
    kept = "".join(line for line in shared.splitlines(keepends=True) if line not in leaving)
    for name, text in copies.items():
        rewrite_in_place(os.path.join(directory, name), kept + text[len(shared) :])
    rewrite_in_place(hosts, kept)
    return True


def _load_sdrun_net() -> None:
    """Before this process imports sdrun.net's other modules (the full tear-down, a rare case):
    sdrun.net as it is, with its __init__, where unplug_entry made it a bare package."""
    package = sys.modules.get("sdrun.net")
    if package is not None and not hasattr(package, "__file__"):  # the bare one: no file of its own
        del sys.modules["sdrun.net"]
        __import__("sdrun.net")


class networking_lock:
    """The networking lock of an sdrun root (ipam.locked, without contextlib)."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "net", "lock")
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)
