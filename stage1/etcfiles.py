"""The pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, for every stage1 that isolates it.

stage0 writes the pod's own copies in its stage1 directory: its hostname, a
hosts file naming it, the host's resolv.conf. A pod on a network gets its
network's hosts file and resolv.conf instead (sdrun.net.pod_files), read-only:
every pod of the network shares them, and they are rewritten in place as pods
come and go. The entry binds them in from the stage1 directory, its working
directory, hence the relative sources of etc_mounts().
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sdrun.linux.mounts import BindMount
from sdrun.net import pod_files

if TYPE_CHECKING:
    from sdrun.pod import Pod

ETC_FILES = ("hostname", "hosts", "resolv.conf")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def pod_hostname(pod: Pod) -> str:
    return pod.spec.isolation.hostname or pod.name


def hosts_file(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"


def write_etc_files(pod: Pod, scratch: Path) -> None:
    """The pod's own ETC_FILES in its stage1 directory scratch."""
    hostname = pod_hostname(pod)
    (scratch / "hostname").write_text(hostname + "\n")
    (scratch / "hosts").write_text(hosts_file(hostname))
    shutil.copyfile(HOST_RESOLV_CONF if HOST_RESOLV_CONF.exists() else os.devnull, scratch / "resolv.conf")


def etc_mounts(pod: Pod) -> list[BindMount]:
    """Binds of the pod's ETC_FILES at /etc: its network's where it has one, else its own."""
    network_files = pod_files(pod)
    return [
        BindMount(str(network_files.get(name, name)), f"/etc/{name}", read_only=name in network_files)
        for name in ETC_FILES
    ]
