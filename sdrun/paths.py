"""Every on-disk path sdrun uses, built in one place.

<root>/pods/<uuid>/            one directory per pod (see sdrun.pod)
<root>/pods/.new-<uuid>/       a pod directory being made, renamed to <uuid> once whole
<root>/pods/.removing-<uuid>.<random>/   one on its way out, renamed so by its removal
<root>/pods/<uuid>/pod.json    the pod manifest: the spec as JSON
<root>/pods/<uuid>/lock        flock(2) guarding the directory
<root>/pods/<uuid>/exit        the app's exit record, written by the unit's ExecStopPost
<root>/pods/<uuid>/health      an installed pod's last health check: its exit status and time
<root>/pods/<uuid>/image       an image pod's image and layer trees (sdrun.image.podimage)
<root>/pods/<uuid>/rootfs      an image pod's overlayfs root, mounted only inside its stage1's namespace
<root>/pods/<uuid>/stage1/     scratch space of the pod's stage1 (its own layout)
<root>/names/<name>            symlink to ../pods/<uuid>; its creation reserves the name
<root>/images/                 the OCI image store (sdrun.image.store documents its layout)
<root>/trustedkeys/            keys `image trust add` copied, which the signature policy names by path
<root>/auth.json               registry credentials `sdrun image login` saved (0600)
<root>/policy.json             which registries pulls may use, which digests they must have
<root>/net.toml                the default network's settings (subnet, bridge)
<root>/net/lock                flock(2) held while a lease is chosen (sdrun.net.ipam)
<root>/net/<network>/network.json           a network's definition (sdrun.net.config)
<root>/net/<network>/leases/<uuid>          a pod's lease: its address, ports, names
<root>/net/<network>/leases/.<uuid>.plan    what its unit's tear-down undoes (sdrun.net.unplug, which
                                            builds these as strings: no pathlib on its path)
<root>/net/<network>/hosts, resolv.conf     the network's, bound into its pods at /etc
<root>/net/<network>/hosts.<uuid>           the same hosts and a pod's --add-host lines
<root>/cache/seccomp/<key>.bpf compiled seccomp programs, shared by the root's pods
<root>/cache/kvm/              the kvm stage1's initramfs images and KVM verdicts

Host-wide, shared by every root:
/etc/sdrun/<name>.toml         an installed pod's spec, which sdrun-generator makes units of
/etc/systemd/system/           where `sdrun install` writes a pod's units (--unit-dir)
/run/netns/sdrun-<uuid>        a pod's network namespace (where ip-netns(8) keeps them)
/run/sdrun/python/<key>        a sealed, read-only view of an interpreter prefix (stage1.sealed)
/run/sdrun/python/.empty       the views' second lower layer (overlayfs wants two without an upper)
/run/sdrun/python/.lock        flock(2) held while a view is mounted
/run/sdrun-oci/<id>/           sdrun-oci's default --root: a container's state.json, lock and exec.fifo

It stays cheap to import (pathlib, a NamedTuple, sdrun.errors): every command, stage1 plan and
network hook imports it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError

DEFAULT_ROOT = Path("/var/lib/sdrun")
STAGING_PREFIX = ".new-"
REMOVING_PREFIX = ".removing-"
# sdrun-oci's --root: one directory per container (sdrun.oci.state), on /run as runc's /run/runc.
OCI_ROOT = Path("/run/sdrun-oci")
SEALED_INTERPRETERS = Path("/run/sdrun/python")  # on /run: gone at reboot, as the mounts in it
# No view is named so: stage1.sealed.prefix_key ends each name with -<crc32>.
SEALED_EMPTY_LAYER = SEALED_INTERPRETERS / ".empty"
SEALED_LOCK = SEALED_INTERPRETERS / ".lock"
NETNS_DIR = Path("/run/netns")
POD_NAMESPACES_DIR = Path("/run/sdrun/pods")  # <uuid>/{ipc,uts[,net]}: a pod of several apps' namespace files
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")  # where `sdrun install` writes units unless --unit-dir
SPEC_DIR = Path("/etc/sdrun")  # the generator's: each NAME.toml there is a pod's spec


def netns_path(name: str) -> Path:
    """The bind mount that keeps the named network namespace, as `ip netns add NAME` makes it."""
    return NETNS_DIR / name


def sealed_interpreter(prefix_key: str) -> Path:
    """The mount point of the sealed view of the interpreter prefix that prefix_key names."""
    return SEALED_INTERPRETERS / prefix_key


class Paths(NamedTuple):
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None) -> Paths:
        """The paths of the root the user chose (--root, $SDRUN_ROOT, the default), once it is known
        to be a directory or absent (made when first needed): a file there would fail every command
        later, as a bare NotADirectoryError."""
        chosen = Path(root or os.environ.get("SDRUN_ROOT") or DEFAULT_ROOT).absolute()
        try:
            if stat.S_ISDIR(chosen.stat().st_mode):
                return cls(chosen)
        except FileNotFoundError:
            return cls(chosen)
        except NotADirectoryError:  # a file on the way to it
            pass
        raise SdrunError(f"root '{chosen}' is not a directory", hint="--root DIR or $SDRUN_ROOT: sdrun's state")

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def names(self) -> Path:
        return self.root / "names"

    @property
    def pod_groups(self) -> Path:
        """Pods of several apps (sdrun.pods): their own PodStore's directories, and names."""
        return self.root / "pod-groups"

    @property
    def pod_group_names(self) -> Path:
        return self.root / "pod-group-names"

    @property
    def apps(self) -> Path:
        """The apps of pods of several apps, each a pod directory of a PodStore of their own."""
        return self.root / "apps"

    @property
    def app_names(self) -> Path:
        return self.root / "app-names"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def trusted_keys(self) -> Path:
        return self.root / "trustedkeys"

    @property
    def auth_file(self) -> Path:
        return self.root / "auth.json"

    @property
    def policy_file(self) -> Path:
        return self.root / "policy.json"

    @property
    def net(self) -> Path:
        return self.root / "net"

    @property
    def net_settings(self) -> Path:
        return self.root / "net.toml"

    @property
    def net_lock(self) -> Path:
        return self.net / "lock"

    def network_dir(self, network: str) -> Path:
        return self.net / network

    def network_definition(self, network: str) -> Path:
        return self.network_dir(network) / "network.json"

    def leases_dir(self, network: str) -> Path:
        return self.network_dir(network) / "leases"

    def lease(self, network: str, pod_uuid: str) -> Path:
        return self.leases_dir(network) / pod_uuid

    def teardown_plan(self, network: str, pod_uuid: str) -> Path:
        """Beside the lease, a dot-file: lease listings skip it."""
        return self.leases_dir(network) / f".{pod_uuid}.plan"

    def network_hosts(self, network: str) -> Path:
        return self.network_dir(network) / "hosts"

    def network_resolv_conf(self, network: str) -> Path:
        return self.network_dir(network) / "resolv.conf"

    def own_hosts(self, network: str, pod_uuid: str) -> Path:
        """The hosts file of a pod with --add-host on a network: the network's, and the pod's lines."""
        return self.network_dir(network) / f"hosts.{pod_uuid}"

    @property
    def cache(self) -> Path:
        """What every pod of the root shares and any of them may rebuild: safe to remove."""
        return self.root / "cache"

    @property
    def seccomp_cache(self) -> Path:
        return self.cache / "seccomp"

    @property
    def kvm_cache(self) -> Path:
        return self.cache / "kvm"

    def pod_dir(self, uuid: str) -> Path:
        return self.pods / uuid

    def staging_dir(self, uuid: str) -> Path:
        return self.pods / f"{STAGING_PREFIX}{uuid}"

    def removing_dir(self, uuid: str) -> Path:
        """A fresh name for a pod directory being removed: one per removal, never reused."""
        return self.pods / f"{REMOVING_PREFIX}{uuid}.{os.urandom(4).hex()}"

    @staticmethod
    def root_of(pod_dir: Path) -> Path:
        """The sdrun root a pod directory (<root>/pods/<uuid>) belongs to."""
        return pod_dir.parent.parent

    @classmethod
    def of_pod(cls, pod_dir: Path) -> Paths:
        """The paths of the sdrun root a pod directory belongs to."""
        return cls(cls.root_of(pod_dir))

    def name_link(self, name: str) -> Path:
        return self.names / name

    @staticmethod
    def manifest(pod_dir: Path) -> Path:
        return pod_dir / "pod.json"

    @staticmethod
    def lock(pod_dir: Path) -> Path:
        return pod_dir / "lock"

    @staticmethod
    def exit_record(pod_dir: Path) -> Path:
        return pod_dir / "exit"

    @staticmethod
    def health_record(pod_dir: Path) -> Path:
        return pod_dir / "health"

    @staticmethod
    def pod_image(pod_dir: str | os.PathLike[str]) -> Path:
        return Path(pod_dir) / "image"

    @staticmethod
    def pod_rootfs(pod_dir: str | os.PathLike[str]) -> Path:
        return Path(pod_dir) / "rootfs"

    @staticmethod
    def stage1_dir(pod_dir: Path) -> Path:
        """Scratch space owned by the pod's stage1 (mount points, overlay dirs)."""
        return pod_dir / "stage1"
