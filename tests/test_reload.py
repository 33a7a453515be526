"""Pods across `systemctl daemon-reload` and `daemon-reexec`, under the real systemd.

systemd keeps a transient unit as a file in /run/systemd/transient and reads it
back at every reload: a property it writes under a key it cannot parse, or a
command line it cannot re-parse, is lost or changed in the running pod (issue
17). So every kind of unit sdrun makes must show the same properties before and
after, and pods must go on running, restarting and stopping cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from sdrun.systemd import propertytable
from sdrun.systemd.bus import Systemd
from sdrun.systemd.unitfile import UnitFile
from tests.conftest import SDRUN, Sdrun, needs_systemd, systemctl_show, unique_name, wait_for
from tests.test_kvm import KVM, VM_TIMEOUT, needs_vm
from tests.test_net_pods import assert_no_pod_left, fetch, free_ports

pytestmark = needs_systemd
SLEEP = ("--", "sleep", "1000")
APP = ("--", "sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait")  # PID 1 of its namespace: it says how it ends
# What moves by itself while a unit runs; any other property must not change.
# (A timer's next elapse is systemd's own: 252 computes OnActiveSec= afresh at a reload. A unit that
# never ran, the health check's, gets a StateChangeTimestamp= there.)
VOLATILE = re.compile(
    r"(Memory|CPUUsage|Tasks|IP|IO)[A-Za-z]*(Current|Available|NSec|Bytes|Packets|Operations)$"
    r"|^(MemoryAvailable|EffectiveMemory[A-Za-z]*|EffectiveTasksMax|NextElapseUSec[A-Za-z]*|LastTriggerUSec.*|StateChangeTimestamp.*"
    r"|ControlGroupId)$"  # a failed unit's cgroup is gone: 0 after a reload
)
# Lists of units whose order systemd does not keep, and which has no meaning (nor has DeviceAllow='s).
UNORDERED = re.compile(
    r"^(After|Before|Requires|Requisite|Wants|BindsTo|PartOf|Upholds|Conflicts|OnFailure|OnSuccess|Triggers"
    r"|JoinsNamespaceOf|PropagatesReloadTo|ReloadPropagatedFrom|PropagatesStopTo|StopPropagatedFrom|RequiredBy"
    r"|RequisiteOf|WantedBy|BoundBy|ConsistsOf|UpheldBy|ConflictedBy|OnFailureOf|OnSuccessOf|TriggeredBy)$"
)
# An Exec* command as `systemctl show` prints it: what it runs, then how its last run went
# (start_time=..., pid=...), which is the run's and not the unit's.
RUN_STATUS = re.compile(
    r" ; start_time=\[[^]]*\] ; stop_time=\[[^]]*\] ; pid=\d+ ; code=\S+ ; status=\S+| ; next_elapse=[^}]*"
)


def systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True, capture_output=True, timeout=120)


def unit_properties(unit: str) -> dict[str, str]:
    """Every property `systemctl show` has of the unit, but for counters and the commands' last run."""
    output = subprocess.run(["systemctl", "show", unit], capture_output=True, text=True, check=True).stdout
    shown: dict[str, list[str]] = {}
    for line in output.splitlines():  # a property with several values shows on several lines
        name, _, value = line.partition("=")
        if not VOLATILE.search(name):
            shown.setdefault(name, []).append(RUN_STATUS.sub("", value))
    return {name: _comparable(name, values) for name, values in shown.items()}


def _comparable(name: str, values: list[str]) -> str:
    if UNORDERED.match(name):
        return " ".join(sorted(" ".join(values).split()))
    return "\n".join(sorted(values) if name == "DeviceAllow" else values)


def journal_since(cursor_time: str) -> str:
    subprocess.run(["journalctl", "--sync"], check=True)
    command = ["journalctl", "--no-pager", "-o", "cat", "--since", cursor_time, "_PID=1"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def assert_unchanged_across_reloads(units: list[str]) -> None:
    """The units' properties, before and after a daemon-reload, then a daemon-reexec; and no word
    from systemd about their transient files."""
    since = now()
    time.sleep(1)  # the journal's --since has a resolution of one second
    before = {unit: unit_properties(unit) for unit in units}
    for verb in ("daemon-reload", "daemon-reexec"):
        systemctl(verb)
        for unit in units:
            after = unit_properties(unit)
            changed = {name: (before[unit].get(name), after.get(name)) for name in before[unit].keys() | after.keys()}
            changed = {name: values for name, values in changed.items() if values[0] != values[1]}
            assert not changed, f"{unit} after {verb}: {changed}"
    journal = journal_since(since)
    for unit in units:
        assert f"/run/systemd/transient/{unit}" not in journal, journal


POD_KINDS = {
    "namespace, no network, limits": (
        "--net", "none", "--memory", "64M", "--cpus", "0.5", "--pids-limit", "50", "-e", "A=b c;$d",
        "--stop-signal", "INT", "--stop-timeout", "2.5", "--restart-sec", "0.25", "--ulimit", "nofile=1024:2048",
        *APP,
    ),
    "namespace, stop timeout 0": ("--net", "none", "--stop-timeout", "0", *APP),
    "namespace, published port": ("--net", "default", "-p", "{port}:8000", *APP),
    "namespace, restart always": ("--net", "none", "--restart", "always", "--restart-sec", "0.5", *APP),
    "namespace, detached --rm": ("--rm", "--net", "none", *APP),
    "fly, systemd alone": ("--stage1", "fly", "-e", "A=b c;$d", "--ulimit", "nofile=1024:2048", "-w", "/tmp", *SLEEP),
    "fly, systemd alone, as another user": ("--stage1", "fly", "-u", "65534:65534", *SLEEP),
    "fly, the entry": ("--stage1", "fly", "-v", "/usr:/mnt:ro", *SLEEP),
}  # fmt: skip


@pytest.mark.parametrize("options", POD_KINDS.values(), ids=POD_KINDS.keys())
def test_a_pods_unit_is_the_same_after_a_reload(sdrun: Sdrun, rootfs: Path, options: tuple[str, ...]) -> None:
    name = unique_name("reload")
    (port,) = free_ports(1)
    arguments = [option.format(port=port) for option in options]
    split = arguments.index("--")
    sdrun("run", "-d", "--name", name, *arguments[:split], "--rootfs", str(rootfs), *arguments[split:])
    assert_unchanged_across_reloads([f"sdrun-{name}.service"])
    if "0" in options:  # the stop timeout bounds ExecStopPost= too: a zero one leaves it no time
        sdrun("rm", "-f", name)
    else:
        assert_stops_cleanly(sdrun, name, removed="--rm" in options)


def assert_stops_cleanly(sdrun: Sdrun, name: str, *, removed: bool = False) -> None:
    """The pod stops as it would have without the reloads: its ExecStopPost= ran, as root."""
    sdrun("stop", name)
    if removed:  # its ExecStopPost= removed it
        assert name not in sdrun("list").stdout
        assert not sdrun.pods()
        return
    assert re.search(rf"{name}\s+exited", sdrun("list").stdout), sdrun("list").stdout
    sdrun("rm", name)
    assert_no_pod_left(sdrun)


def test_a_pod_whose_command_systemd_cannot_reread_runs_through_the_entry(sdrun: Sdrun, rootfs: Path) -> None:
    """fly runs a --rootfs app as the unit's own command, unless systemd 252 would mangle it."""
    name = unique_name("reload")
    script = "echo $0; exec sleep 1000"
    sdrun("run", "-d", "--name", name, "--stage1", "fly", "--rootfs", str(rootfs), "--", "sh", "-c", script)
    unit = f"sdrun-{name}.service"
    assert "stage1.fly" in systemctl_show(unit, "ExecStart")["ExecStart"]
    assert_unchanged_across_reloads([unit])
    assert_stops_cleanly(sdrun, name)


@needs_vm
def test_a_vms_unit_is_the_same_after_a_reload(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("reload")
    sdrun("run", "-d", "--name", name, *KVM, "--rootfs", str(rootfs), *SLEEP, timeout=VM_TIMEOUT)
    assert_unchanged_across_reloads([f"sdrun-{name}.service"])
    sdrun("rm", "-f", name, timeout=VM_TIMEOUT)
    assert not sdrun.pods()


def test_a_scope_is_the_same_after_a_reload(sdrun: Sdrun, rootfs: Path) -> None:
    name = unique_name("reload")
    command = [SDRUN, "--root", str(sdrun.root), "run", "--rm", "--scope", "--name", name, "--rootfs", str(rootfs)]
    process = subprocess.Popen([*command, *SLEEP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        unit = f"sdrun-{name}.scope"
        wait_for(lambda: systemctl_show(unit, "ActiveState")["ActiveState"] == "active")
        assert_unchanged_across_reloads([unit])
        sdrun("kill", name)  # the app, PID 1 of its namespace, ignores SIGTERM
        assert process.wait(timeout=30) == 128 + 9
    finally:
        process.kill()
        process.wait()


def test_an_installed_pod_and_its_health_check_are_the_same_after_a_reload(
    sdrun: Sdrun, rootfs: Path, installed: list[str]
) -> None:
    name = unique_name("reload")
    health = ("--healthcheck", "true", "--healthcheck-interval", "600")
    sdrun("install", "--now", name, *health, "--rootfs", str(rootfs), *APP)
    installed.append(name)
    units = [f"sdrun-{name}.service", f"sdrun-health@{name}.timer", f"sdrun-health@{name}.service"]
    assert_unchanged_across_reloads(units)


def main_pid(unit: str) -> str:
    return systemctl_show(unit, "MainPID")["MainPID"]


def test_pods_keep_running_restarting_and_stopping_cleanly_across_reloads(
    sdrun: Sdrun, rootfs: Path, installed: list[str]
) -> None:
    """The issue's case: a pod with a published port, one restarted always, one health-checked,
    across daemon-reload and daemon-reexec; then each stops cleanly and leaves nothing."""
    web, looping, checked = unique_name("web"), unique_name("loop"), unique_name("checked")
    (port,) = free_ports(1)
    server = "mkdir -p /www && echo hello > /www/index.html && trap 'exit 0' TERM; httpd -f -p 8000 -h /www & wait"
    sdrun("run", "-d", "--name", web, "-p", f"{port}:8000", "--rootfs", str(rootfs), "--", "sh", "-c", server)
    sdrun("run", "-d", "--name", looping, "--net", "none", "--restart", "always", "--rootfs", str(rootfs), *APP)
    health = ("--healthcheck", "true", "--healthcheck-interval", "600")
    sdrun("install", "--now", checked, "--net", "default", *health, "--rootfs", str(rootfs), *APP)
    installed.append(checked)
    assert fetch(f"http://127.0.0.1:{port}/") == "hello\n"

    for verb in ("daemon-reload", "daemon-reexec"):
        systemctl(verb)
        assert fetch(f"http://127.0.0.1:{port}/") == "hello\n"
        # The restarting pod, killed, comes back with the same command.
        first = main_pid(f"sdrun-{looping}.service")
        sdrun("kill", "--signal", "KILL", looping)
        wait_for(lambda first=first: main_pid(f"sdrun-{looping}.service") not in ("0", first), timeout=30)
        wait_for(lambda: systemctl_show(f"sdrun-{looping}.service", "SubState")["SubState"] == "running")
        # The health check runs in the pod and passes: the pod is not restarted for it.
        invocation = systemctl_show(f"sdrun-{checked}.service", "InvocationID")
        systemctl("start", f"sdrun-health@{checked}.service")
        assert systemctl_show(f"sdrun-health@{checked}.service", "Result")["Result"] == "success"
        assert systemctl_show(f"sdrun-{checked}.service", "InvocationID") == invocation
        listing = sdrun("list").stdout
        assert all(re.search(rf"{pod}\s+running", listing) for pod in (web, looping, checked)), listing

    for pod in (web, looping):
        sdrun("stop", pod)
        assert re.search(rf"{pod}\s+exited", sdrun("list").stdout)
        sdrun("rm", pod)
    sdrun("uninstall", checked)
    installed.remove(checked)
    assert_no_pod_left(sdrun)
    assert not sdrun.new_units()
    # The port is free again for a new pod.
    sdrun("run", "--rm", "-p", f"{port}:8000", "--rootfs", str(rootfs), "--", "true")


@pytest.mark.parametrize(
    ("directory", "refusal"),
    [
        ("a;b", "ExecStart: systemd 252 would change the argument"),  # the pod directory is in its commands
        (
            "a b",
            "LogExtraFields: systemd 252 would change the field 'SDRUN_ROOT=",
        ),  # and the root in its journal fields
    ],
)
def test_a_root_whose_path_systemd_would_change_is_refused_and_leaves_nothing(
    sdrun: Sdrun, rootfs: Path, directory: str, refusal: str
) -> None:
    """Every pod's unit names its directory and its root: under a root with a `;`, 252 would change
    the command at a reload, with a blank the root's journal field (a pod's logs would go from `logs --all`)."""
    odd = Sdrun(sdrun.root / directory, sdrun.units_at_start)
    result = odd("run", "-d", "--net", "none", "--rootfs", str(rootfs), *SLEEP, check=False)
    assert result.returncode == 125
    assert result.stderr.startswith(f"sdrun: {refusal}") and len(result.stderr.splitlines()) == 1, result.stderr
    assert not odd.pods() and not odd.names() and not sdrun.new_units()


def command(*argv: str, ignore_failure: bool = False) -> list[object]:
    return [argv[0], list(argv), ignore_failure]


# A value for every property of propertytable.PROPERTIES. Together they make a service whose app
# (/bin/false) fails at once, so that it stays, failed, for `systemctl show`; and a scope of PIDs=.
TABLE_SAMPLES: dict[str, object] = {
    "Description": "sdrun's table of properties, 100% written",
    "Requires": ["systemd-journald.service"],
    "After": ["systemd-journald.service"],
    "Wants": ["systemd-journald.service"],
    "Requisite": ["systemd-journald.service"],
    "StartLimitIntervalUSec": 60_000_000,
    "StartLimitBurst": 3,
    "CollectMode": "inactive",  # a failed unit stays
    "Type": "exec",
    "NotifyAccess": "all",
    "Slice": "machine.slice",
    "ExecStartPre": [command("/bin/echo", "a b", '"c"', "50%", "\\", "")],
    "ExecStart": [command("/bin/false")],
    "ExecStartPost": [command("/bin/true", ignore_failure=True)],
    "ExecStopPost": [command("/bin/true", ignore_failure=True), command("/bin/echo", "done")],
    "PermissionsStartOnly": True,
    "Delegate": True,
    "StandardOutput": "journal",
    "StandardError": "journal",
    "SyslogIdentifier": "sdrun-table",
    "SyslogLevelPrefix": False,
    "LogExtraFields": [b"SDRUN_TABLE=1", b"SDRUN_ROOT=/a;b%d$e"],
    "LogRateLimitIntervalUSec": 0,
    "MemoryMax": 64 << 20,
    "CPUQuotaPerSecUSec": 330_000,
    "TasksMax": 50,
    "Restart": "no",
    "RestartUSec": 250_000,
    "KillMode": "mixed",
    "KillSignal": 2,
    "TimeoutStopUSec": 2_500_000,
    "DevicePolicy": "closed",
    "DeviceAllow": [["/dev/null", "rw"], ["char-pts", "rw"]],
    "SELinuxContext": "sdrun_t",
    "AppArmorProfile": [True, "sdrun"],
    "RootDirectory": str(Path(__file__).parents[1] / "build" / "rootfs"),
    "RootDirectoryStartOnly": True,
    "MountAPIVFS": False,
    "BindPaths": [["/proc", "/proc", False, propertytable.MS_REC], ["/dev", "/dev", True, 0]],
    "User": "65534",
    "Group": "65534",
    "SupplementaryGroups": ["100", "101"],
    "WorkingDirectory": "-/tmp",
    "Environment": ["A=b c;$d", "B=50%", 'C="q"\\'],
    "UnsetEnvironment": ["LANG", "TERM"],
    "IgnoreSIGPIPE": False,
    **{name: 20 for name in propertytable.HARD_LIMITS},
    **{f"{name}Soft": 10 for name in propertytable.HARD_LIMITS},
    "AddRef": True,
    "PIDs": None,  # the scope's process, made by the test
    "StandardInputFileDescriptor": 0,  # the first of the call's descriptors: /dev/null
}
SCOPE_ONLY = ("PIDs",)


def test_every_property_of_the_table_survives_a_reload_and_means_the_same_in_a_unit_file() -> None:
    """What the table says systemd 252 reads back, it does: each property is the same after a
    daemon-reload and a daemon-reexec as systemd took it over D-Bus, and its unit-file form
    (`sdrun install`'s, the generator's) gives systemd the same value as D-Bus does."""
    assert set(TABLE_SAMPLES) == set(propertytable.PROPERTIES)  # a new row needs its sample here
    name = unique_name("sdrun-table")
    service, scope, installed = f"{name}.service", f"{name}.scope", Path(f"/run/systemd/system/{name}-file.service")
    sleeper = subprocess.Popen(["sleep", "1000"])
    samples = [propertytable.prop(key, value) for key, value in TABLE_SAMPLES.items() if key not in SCOPE_ONLY]
    scope_samples = [propertytable.prop(key, TABLE_SAMPLES[key]) for key in ("Description", "Slice", "Delegate")]
    systemd = Systemd.connect(unix_fds=True)
    null = os.open("/dev/null", os.O_RDWR)
    try:
        systemd.start_transient_unit(service, samples, [null])
        systemd.start_transient_unit(scope, [*scope_samples, propertytable.prop("PIDs", [sleeper.pid])])
        wait_for(lambda: systemctl_show(service, "ActiveState")["ActiveState"] == "failed")
        wait_for(lambda: systemctl_show(scope, "ActiveState")["ActiveState"] == "active")
        assert_unchanged_across_reloads([service, scope])

        on_file = [sample for sample in samples if propertytable.PROPERTIES[sample[0]].section is not None]
        installed.write_text(UnitFile().extend(propertytable.unit_file_entries(on_file)).render())
        systemctl("daemon-reload")
        sent, written = unit_properties(service), unit_properties(installed.name)
        names = {key for key, _, _ in on_file}
        assert {key: sent.get(key) for key in names} == {key: written.get(key) for key in names}
        assert names - sent.keys() == {"PermissionsStartOnly"}, names - sent.keys()  # what systemctl shows not
    finally:
        os.close(null)
        systemd.close()
        sleeper.kill()
        sleeper.wait()
        installed.unlink(missing_ok=True)
        subprocess.run(["systemctl", "reset-failed", service], check=False, capture_output=True)
        systemctl("daemon-reload")
