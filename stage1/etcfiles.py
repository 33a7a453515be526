"""The pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, for every stage1 that isolates it.

stage0 writes the pod's own copies in its stage1 directory: its hostname, a
hosts file naming it (and its --add-host lines), the host's resolv.conf. A pod
on a network gets its network's hosts file and resolv.conf instead
(sdrun.net.pod_files), read-only: every pod of the network shares them, and
they are rewritten in place as pods come and go (a pod with --add-host has its
own copy of the hosts file, rewritten with them). --dns, --dns-search and
--dns-option give the pod a resolv.conf of its own: the host's (or its
network's) with those lines replaced. The entry binds them in from the stage1
directory, its working directory, hence the relative sources of etc_mounts().
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sdrun.linux.mounts import BindMount
from sdrun.net import added_hosts, on_network, pod_files

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.spec import Isolation

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
    (scratch / "hosts").write_text(hosts_file(hostname) + added_hosts(pod.spec.isolation.add_host))
    if not pod.spec.isolation.own_resolv_conf():
        shutil.copyfile(HOST_RESOLV_CONF if HOST_RESOLV_CONF.exists() else os.devnull, scratch / "resolv.conf")
        return
    try:
        host = HOST_RESOLV_CONF.read_text()
    except OSError:
        host = ""
    if on_network(pod.spec):  # what its network's resolv.conf would have been
        from sdrun.net.ipam import resolv_conf

        host = resolv_conf(host)
    (scratch / "resolv.conf").write_text(pod_resolv_conf(host, pod.spec.isolation))


def pod_resolv_conf(base: str, isolation: Isolation) -> str:
    """base with the nameserver, search (and domain) and options lines replaced by the pod's
    --dns, --dns-search and --dns-option, where it gives them."""
    replaced = {
        "nameserver": bool(isolation.dns),
        "search": bool(isolation.dns_search),
        "domain": bool(isolation.dns_search),
        "options": bool(isolation.dns_option),
    }
    lines = [line + "\n" for line in base.splitlines() if not replaced.get(line.split()[0] if line.split() else "")]
    lines += [f"nameserver {address}\n" for address in isolation.dns]
    domains = [domain for domain in isolation.dns_search if domain != "."]
    if domains:
        lines.append(f"search {' '.join(domains)}\n")
    if isolation.dns_option:
        lines.append(f"options {' '.join(isolation.dns_option)}\n")
    return "".join(lines)


def etc_mounts(pod: Pod) -> list[BindMount]:
    """Binds of the pod's ETC_FILES at /etc: its network's where it has one, else its own."""
    network_files = pod_files(pod)
    if pod.spec.isolation.own_resolv_conf():
        network_files.pop("resolv.conf", None)
    return [
        BindMount(str(network_files.get(name, name)), f"/etc/{name}", read_only=name in network_files)
        for name in ETC_FILES
    ]
