"""The namespace stage1: nspawn-like isolation with secure defaults and no resident helper.

stage0 calls plan(): it checks what can be checked before the unit exists,
writes the pod's scratch files (hostname, hosts, resolv.conf, the compiled
seccomp filter, the overlay's upper layer) and returns a Type=notify unit whose
entry (`python -m stage1.namespace run POD_DIR`, see launch.py) sets the
container up and hands systemd its init as MainPID. What systemd can enforce
without hampering that set-up, it enforces: DevicePolicy=closed with the minimal
/dev, KillSignal=, TimeoutStopSec=, SELinuxContext=, AppArmorProfile=.
Capabilities, no_new_privs and seccomp are applied in-process right before the
exec (as runc does), since CapabilityBoundingSet= or SystemCallFilter= would
also bind the entry that has to mount and unshare.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdrun.errors import SpecError
from stage1.app import resolve_app
from stage1.interface import Stage1, UnitPlan, entry_command
from stage1.namespace.container import (
    DEVICE_ALLOW,
    TINI,
    capabilities_of,
    hosts_file,
    seccomp_filter_path,
    stage1_dir,
    user_namespace_of,
)

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.systemd.bus import Property

USEC = 1_000_000
DEFAULT_STOP_TIMEOUT = 10.0  # seconds, as Docker; systemd's 90 s is long for an app that ignores SIGTERM as PID 1


class Namespace(Stage1, name="namespace"):
    def plan(self, pod: Pod) -> UnitPlan:
        prepare(pod)
        return UnitPlan(*entry_command("stage1.namespace", pod), tuple(unit_properties(pod)))

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        from stage1.namespace.launch import launch

        prepare(pod)
        launch(pod, supervise=True)

    def enter(self, pod: Pod, leader: int, argv: list[str]) -> NoReturn:
        from stage1.namespace.enter import enter

        enter(pod, leader, argv)

    def gc(self, pod: Pod) -> None:
        # Every mount lived in the container's namespaces and went with them; the
        # scratch files (upper layer included) go with the pod directory.
        pass


def unit_properties(pod: Pod) -> list[Property]:
    spec = pod.spec
    properties: list[Property] = [
        ("Type", "s", "notify"),
        ("NotifyAccess", "s", "all"),  # MAINPID= comes from the entry, which then exits
        ("DevicePolicy", "s", "closed"),
        ("DeviceAllow", "a(ss)", [list(device) for device in DEVICE_ALLOW]),
    ]
    if spec.stop_signal:
        import signal

        properties.append(("KillSignal", "i", int(signal.Signals[spec.stop_signal])))
    stop_timeout = DEFAULT_STOP_TIMEOUT if spec.stop_timeout is None else spec.stop_timeout
    properties.append(("TimeoutStopUSec", "t", round(stop_timeout * USEC)))
    if spec.isolation.selinux_type:
        properties.append(("SELinuxContext", "(bs)", (False, spec.isolation.selinux_type)))
    if spec.isolation.apparmor:
        properties.append(("AppArmorProfile", "(bs)", (False, spec.isolation.apparmor)))
    return properties


def prepare(pod: Pod) -> None:
    """Check the pod and write its scratch files; raise SpecError before any unit exists."""
    spec = pod.spec
    capabilities = capabilities_of(spec)
    user_namespace = user_namespace_of(pod)
    if spec.rootfs:
        resolve_app(Path(spec.rootfs), spec.app)
    elif user_namespace is not None:
        raise SpecError("--private-users works with --rootfs pods only for now")
    elif importlib.util.find_spec("stage1.rootfs") is None:
        raise SpecError("the namespace stage1 cannot mount images yet", hint="use --rootfs DIR")
    if spec.isolation.init and not Path(TINI).exists():
        raise SpecError(f"--init needs {TINI}", hint="apt-get install tini")
    scratch = stage1_dir(pod)
    for directory in (scratch, scratch / "upper", scratch / "work"):
        directory.mkdir(mode=0o755, exist_ok=True)
    if user_namespace is not None:  # container root owns the top of its writable layer
        os.chown(scratch / "upper", user_namespace.base, user_namespace.base)
    hostname = spec.isolation.hostname or pod.name
    (scratch / "hostname").write_text(hostname + "\n")
    (scratch / "hosts").write_text(hosts_file(hostname))
    host_resolv_conf = Path("/etc/resolv.conf")
    shutil.copyfile(host_resolv_conf if host_resolv_conf.exists() else os.devnull, scratch / "resolv.conf")
    from sdrun.linux import seccomp  # stage0 only: the in-unit entry just reads the compiled program

    compiled = seccomp.compiled_filter(spec.isolation.seccomp, capabilities, _seccomp_cache(pod))
    if compiled is not None:
        shutil.copyfile(compiled, seccomp_filter_path(pod))


def _seccomp_cache(pod: Pod) -> Path:
    """Shared by every pod of the same sdrun root: <root>/cache/seccomp (pod dirs are <root>/pods/<uuid>)."""
    return pod.dir.parent.parent / "cache" / "seccomp"
