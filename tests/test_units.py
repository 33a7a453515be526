"""`sdrun generate`: golden files, the unit-file writer's escaping, the spec round trip.

Each tests/golden/NAME.toml is a spec file whose `## assert-...` comments state what the
generated units must hold (as quadlet's tests do); tests/golden/NAME.expected is the whole
output of `sdrun generate --spec NAME.toml`. SDRUN_UPDATE_GOLDEN=1 rewrites the .expected files.
Placeholders keep them independent of the checkout: @ROOTFS@, @PYTHON@ (the sealed interpreter), @VENV@,
@PROJECT@, @UUID@.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sdrun.errors import SdrunError
from sdrun.net.ports import PortMapping
from sdrun.spec import AppSpec, Isolation, PodSpec, Resources, ServiceOptions, Volume
from sdrun.specbuild import all_settings
from sdrun.systemd import properties, propertytable
from sdrun.systemd.bus import Property
from sdrun.systemd.unitfile import Command, UnitFile, command_line, quote_word
from sdrun.units import installed_pod_uuid, spec_from_arguments, spec_settings
from stage1 import sealed
from tests.conftest import PROJECT, SDRUN, VENV_BIN

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_SPECS = sorted(GOLDEN.glob("*.toml"))


def generate(spec_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SDRUN, "--root", "/var/lib/sdrun", "generate", "--spec", str(spec_file)],
        capture_output=True,
        text=True,
        check=False,
    )


def with_placeholders(text: str, name: str) -> str:
    return (
        text.replace(sealed.executable(), "@PYTHON@")
        .replace(str(VENV_BIN), "@VENV@")
        .replace(str(PROJECT), "@PROJECT@")
        .replace(installed_pod_uuid(name), "@UUID@")
    )


def parse_units(output: str) -> dict[str, list[tuple[str, str, str]]]:
    """`generate` output to {unit: [(section, key, value)]}; a single unit is named ''."""
    units: dict[str, list[tuple[str, str, str]]] = {}
    current, section = "", ""
    for line in output.splitlines():
        if line.startswith("# ==> "):
            current = line.removeprefix("# ==> ").removesuffix(" <==")
        elif line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            units.setdefault(current, []).append((section, key, value))
    return units


def check_assertions(spec_file: Path, output: str) -> None:
    units = parse_units(output)
    service = next(iter(units.values()), [])
    for line in spec_file.read_text().splitlines():
        if not line.startswith("## "):
            continue
        verb, *words = line[3:].split(" ")
        if verb == "assert-key-is":
            section, key, expected = words[0], words[1], " ".join(words[2:])
            values = [value for sect, name, value in service if (sect, name) == (section, key)]
            assert expected in values, f"{spec_file.name}: [{section}] {key}= is {values}, not {expected!r}"
        elif verb == "assert-key-missing":
            section, key = words
            assert all((sect, name) != (section, key) for sect, name, _ in service), f"{spec_file.name}: {line}"
        elif verb == "assert-unit":
            assert words[0] in units, f"{spec_file.name}: no unit {words[0]} in {sorted(units)}"
        elif verb != "assert-failure":
            raise AssertionError(f"{spec_file.name}: unknown assertion {verb}")


@pytest.mark.parametrize("source", GOLDEN_SPECS, ids=lambda path: path.stem)
def test_golden(source: Path, rootfs: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / source.name
    spec_file.write_text(source.read_text().replace("@ROOTFS@", str(rootfs)))
    result = generate(spec_file)
    failure = [
        line[len("## assert-failure ") :] for line in source.read_text().splitlines() if "assert-failure" in line
    ]
    if failure:
        assert result.returncode == 125 and result.stdout == ""
        assert result.stderr.startswith("sdrun: ") and failure[0] in result.stderr
        assert len(result.stderr.splitlines()) == 1
        return
    assert result.returncode == 0, result.stderr
    output = with_placeholders(result.stdout, source.stem)
    check_assertions(source, output)
    expected = source.with_suffix(".expected")
    if os.environ.get("SDRUN_UPDATE_GOLDEN"):
        expected.write_text(output)
    assert output == expected.read_text()
    assert generate(spec_file).stdout == result.stdout  # byte-stable


def test_words_are_quoted_as_systemd_splits_them() -> None:
    assert quote_word("/bin/sh") == "/bin/sh"
    assert quote_word("a b") == '"a b"'
    assert quote_word("") == '""'
    assert quote_word(";") == '";"'
    assert quote_word('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert quote_word("line\nnext\x01") == '"line\\nnext\\x01"'
    assert quote_word("100%") == "100%%"
    assert quote_word("it's") == '"it\'s"'


def test_commands_keep_prefixes_and_a_distinct_argv0() -> None:
    assert command_line(Command("/bin/sh", ("/bin/sh", "-c", "x y"), "+")) == '+/bin/sh -c "x y"'
    assert command_line(Command("/usr/bin/busybox", ("sh", "-c", "true"), "-")) == "-@/usr/bin/busybox sh -c true"


def test_plain_values_escape_specifiers_but_reject_what_a_line_cannot_hold() -> None:
    unit = UnitFile(("header",)).add("Service", "Environment", "A=50%").add("Service", "CPUQuota", "50%")
    assert unit.render() == "# header\n\n[Service]\nEnvironment=A=50%%\nCPUQuota=50%\n"
    with pytest.raises(SdrunError, match="cannot be written"):
        UnitFile().add("Unit", "Description", "two\nlines").render()
    with pytest.raises(SdrunError, match="cannot be written"):
        UnitFile().add("Unit", "Description", "continued\\").render()


def test_sections_come_in_systemds_order_keys_in_insertion_order() -> None:
    unit = UnitFile().add("Install", "WantedBy", "x").add("Service", "B", "1").add("Unit", "A", "2")
    unit.add("Service", "A", "3")
    assert unit.render() == "[Unit]\nA=2\n\n[Service]\nB=1\nA=3\n\n[Install]\nWantedBy=x\n"


def test_a_zero_stop_timeout_stays_a_timeout_in_a_unit_file() -> None:
    """systemd reads TimeoutStopSec=0 as no timeout; --stop-timeout 0 means SIGKILL at once."""
    assert propertytable.unit_file_entries([("TimeoutStopUSec", "t", 0)]) == [("Service", "TimeoutStopSec", "1us")]


def test_every_property_a_pod_can_carry_has_a_unit_file_form() -> None:
    unknown = [("AddRef", "b", True)]
    with pytest.raises(SdrunError, match="AddRef"):
        propertytable.unit_file_entries(unknown)
    entries = propertytable.unit_file_entries(
        [
            ("CPUQuotaPerSecUSec", "t", 1_500_000),
            ("TimeoutStopUSec", "t", 90_500),
            ("KillSignal", "i", 2),
            ("LogExtraFields", "aay", [b"A=1", b"B=2"]),
            ("ExecStopPost", "a(sasb)", [["/bin/rm", ["/bin/rm", "x"], True]]),
            ("PermissionsStartOnly", "b", True),
        ]
    )
    assert entries == [
        ("Service", "CPUQuota", "150%"),
        ("Service", "TimeoutStopSec", "90500us"),
        ("Service", "KillSignal", "SIGINT"),
        ("Service", "LogExtraFields", "A=1"),
        ("Service", "LogExtraFields", "B=2"),
        ("Service", "ExecStopPost", Command("/bin/rm", ("/bin/rm", "x"), "-")),
        ("Service", "PermissionsStartOnly", "yes"),
    ]


def test_only_a_pod_removed_by_its_run_goes_without_an_exit_record(rootfs: Path, tmp_path: Path) -> None:
    from sdrun.paths import Paths
    from sdrun.pod import PodStore
    from stage1.interface import UnitPlan

    spec = PodSpec(name="p", stage1="fly", rootfs=str(rootfs), app=AppSpec(argv=("/bin/true",)))
    pod = PodStore(Paths(tmp_path)).create(spec)
    plan = UnitPlan("/bin/true", ("/bin/true",), ())

    def stop_post(*, record_exit: bool = True) -> list[object]:
        found = properties.service_properties(pod, plan, keep_until_released=True, record_exit=record_exit)
        return [value for name, _, value in found if name == "ExecStopPost"]

    assert stop_post() == [[properties.record_exit_command(pod)]]
    assert stop_post(record_exit=False) == []


def test_a_network_set_up_by_run_leaves_the_unit_its_tear_down_alone(rootfs: Path, tmp_path: Path) -> None:
    from sdrun.paths import Paths
    from sdrun.pod import PodStore
    from stage1.interface import UnitPlan

    spec = PodSpec(name="p", stage1="namespace", rootfs=str(rootfs), app=AppSpec(argv=("/bin/true",)), net="default")
    pod = PodStore(Paths(tmp_path)).create(spec)
    plan = UnitPlan("/bin/true", ("/bin/true",), ())

    def hooks(*, network_ready: bool) -> list[str]:
        found = properties.service_properties(pod, plan, keep_until_released=True, network_ready=network_ready)
        commands = [command for name, _, value in found if name.startswith("Exec") for command in value]
        verbs = []
        for _, argv, _ in commands:
            if argv[1:3] == ["-m", "sdrun.net.hook"]:  # the set-up
                verbs.append(argv[3])
            elif argv[1:3] == ["-S", "-P"] and argv[3].endswith("/sdrun/net/unplug_entry.py"):  # the tear-down
                verbs.append(argv[4])
        return verbs

    assert hooks(network_ready=False) == ["setup", "teardown"]
    assert hooks(network_ready=True) == ["teardown"]


@pytest.mark.parametrize(
    ("seconds", "stop_signal", "expected"),
    [
        (10.0, None, [("TimeoutStopUSec", "t", 10_000_000)]),
        (2.5, 2, [("KillSignal", "i", 2), ("TimeoutStopUSec", "t", 2_500_000)]),
        (0.2, None, [("TimeoutStopUSec", "t", 1_000_000)]),  # each ExecStopPost= gets it too: never under 1 s
        (0.0, 15, [("KillSignal", "i", 9), ("TimeoutStopUSec", "t", 1_000_000)]),  # 0: SIGKILL at once
    ],
)
def test_a_stop_timeout_leaves_the_stop_post_commands_a_second(
    seconds: float, stop_signal: int | None, expected: list[object]
) -> None:
    assert properties.stop_properties(seconds, stop_signal) == expected


def test_cpu_quota_is_what_a_unit_file_can_say() -> None:
    assert properties._cpu_quota(0.333333) == 330_000  # whole percent, as CPUQuota=33%


def full_spec(rootfs: Path) -> PodSpec:
    """A spec with every setting away from its default."""
    return PodSpec(
        name="full",
        stage1="fly",
        rootfs=str(rootfs),
        app=AppSpec(
            argv=("sh", "-c", "echo $HOME; exit 3"),
            env={"PATH": "/bin", "A": "x=y z"},
            workdir="/root",
            user="root:root",
            volumes=(
                Volume(str(rootfs), "/data", True),
                Volume(str(rootfs), "/own", False, True),
                Volume(str(rootfs), "/mapped", False, False, True),
            ),
            entrypoint=("/bin/sh", "-e"),
            ulimits=("nofile=1024:4096", "core=0:unlimited"),
        ),
        resources=Resources(256 << 20, 1.5, 64),
        restart="always",
        labels={"tier": "web"},
        net="web",
        ports=(PortMapping(8080, 80, "tcp", "127.0.0.1"), PortMapping(5353, 53, "udp")),
        stop_signal="SIGINT",
        stop_timeout=2.5,
        isolation=Isolation(
            hostname="box",
            cap_add=("NET_ADMIN",),
            cap_drop=("NET_RAW", "MKNOD"),
            seccomp="unconfined",
            private_users="auto",
            read_only=True,
            tmpfs=("/run:size=1m",),
            device=("/dev/null:/dev/mynull:rw",),
            init=True,
            selinux_type="t",
            apparmor="p",
            add_host=("db:10.0.0.5", "v6:fd00::1", "gw:host-gateway"),
            dns=("10.0.0.53", "2001:db8::53"),
            dns_search=("example.org",),
            dns_option=("ndots:2", "edns0"),
            sysctl=("net.ipv4.ip_unprivileged_port_start=80", "kernel.sem=250 32000 100 128"),
        ),
        service=ServiceOptions(
            requires=("db",),
            restart_sec=1.5,
            start_limit_interval=60.0,
            start_limit_burst=3,
            notify=True,
            listen=("8080",),
            healthcheck=("true",),
            healthcheck_interval=5.0,
            wanted_by=("default.target",),
        ),
        stage1_settings={"kvm_accel": "tcg", "kvm_kernel": "/boot/vmlinuz"},
    )


def test_the_unit_rebuilds_exactly_the_spec_it_was_made_from(rootfs: Path) -> None:
    spec = full_spec(rootfs)
    arguments = [
        f"--{key.replace('_', '-')}" + ("" if value is None else f"={value}") for key, value in spec_settings(spec)
    ]
    assert spec_from_arguments(arguments, "namespace") == spec


def test_every_setting_reaches_the_unit(rootfs: Path) -> None:
    """A setting added to the settings table must be carried by spec_settings too, or units would drop it:
    set it in full_spec above, and check this passes."""
    carried = {key for key, _ in spec_settings(full_spec(rootfs))}
    assert carried == set(all_settings()) - {"env_file", "scope", "image"}  # env files are read into env;
    # scopes are no units; rootfs and image exclude each other


def test_generate_needs_a_name_the_output_can_keep(rootfs: Path) -> None:
    """`run` makes up a random name; a unit's name (and its pod's UUID) must be the same every time."""
    command = [SDRUN, "--root", "/var/lib/sdrun", "generate", "--net", "none", "--rootfs", str(rootfs)]
    unnamed = subprocess.run([*command, "--", "true"], capture_output=True, text=True, check=False)
    assert unnamed.returncode == 125 and unnamed.stdout == ""
    assert unnamed.stderr == "sdrun: generate: name the pod with --name (or --spec FILE, which its file names)\n"
    named = [subprocess.run([*command, "--name", "web", "--", "true"], capture_output=True, check=True) for _ in "ab"]
    assert named[0].stdout == named[1].stdout and b"SyslogIdentifier=web\n" in named[0].stdout


@pytest.mark.parametrize(
    ("prop", "refusal"),
    [
        (("ExecStopPostEx", "a(sasas)", [["/bin/true", ["true"], ["privileged"]]]), "ExecStopPostEx"),
        (("ExecStart", "a(sasb)", [["/bin/sh", ["sh", "-c", "a; b"], False]]), "'a; b'"),
        (("ExecStartPre", "a(sasb)", [["/bin/echo", ["echo", "$$HOME"], False]]), "'\\$\\$HOME'"),
        (("TimeoutStopUSec", "t", 0), "no timeout"),
        (("RestartUSec", "t", 1_500), "round"),
        (("CPUQuotaPerSecUSec", "t", 333_300), "round"),
        (("LogExtraFields", "aay", [b"SDRUN_ROOT=/a b"]), "'SDRUN_ROOT=/a b'"),
        (("ExecStart", "a(sasas)", [["/bin/true", ["true"], []]]), "ExecStart"),  # the table's signature only
        (("CPUQuota", "s", "50%"), "CPUQuota"),  # a name not in the table
    ],
)
def test_a_property_systemd_252_cannot_reload_is_refused(prop: Property, refusal: str) -> None:
    with pytest.raises(SdrunError, match=refusal):
        propertytable.refuse_unreloadable([prop])


def test_a_journal_field_with_a_blank_is_quoted_in_a_unit_file() -> None:
    """systemd splits LogExtraFields= at blanks: the root's path may have one."""
    entries = propertytable.unit_file_entries([("LogExtraFields", "aay", [b"SDRUN_ROOT=/a b", b"SDRUN_POD=x"])])
    assert entries == [("Service", "LogExtraFields", '"SDRUN_ROOT=/a b"'), ("Service", "LogExtraFields", "SDRUN_POD=x")]


def test_a_property_is_made_by_its_name_and_an_unknown_name_is_refused_at_once() -> None:
    assert propertytable.prop("TimeoutStopUSec", 5_000_000) == ("TimeoutStopUSec", "t", 5_000_000)
    assert propertytable.prop("DeviceAllow", []) == ("DeviceAllow", "a(ss)", [])
    with pytest.raises(SdrunError, match="ExecStopPostEx"):
        propertytable.prop("ExecStopPostEx", [])


def test_what_systemd_252_reloads_unchanged_is_sent() -> None:
    command = properties.exec_command(["/bin/sh", "-c", "exec printenv X > '/a b/\"c\"%d'"], ignore_failure=True)
    propertytable.refuse_unreloadable(
        [
            ("ExecStopPost", "a(sasb)", [command]),
            ("TimeoutStopUSec", "t", 1),
            ("RestartUSec", "t", 1_500_000),
            ("CPUQuotaPerSecUSec", "t", properties._cpu_quota(0.333333)),
            ("Environment", "as", ["A=b;$c"]),  # written with C escapes, which 252 reads back
        ]
    )
