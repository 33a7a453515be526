"""The settings table (sdrun.settings, sdrun.spec.SETTINGS_TABLE, Stage1.settings) against what is
derived from it and what is written by hand beside it: the docs, the image config, the stage1s."""

from __future__ import annotations

import re
from pathlib import Path

import click

from sdrun.cli import commands, runcommand
from sdrun.image.config import apply_image_config
from sdrun.settings import IMAGE_NONE, RUN, UNITS, field_value, not_honoured
from sdrun.spec import SETTINGS, SETTINGS_TABLE, AppSpec, Isolation, PodSpec, check_settings
from sdrun.specbuild import all_settings, build_spec, stage1_settings
from sdrun.units import spec_from_arguments, spec_settings
from stage1.kvm.backend import ACCEL, KERNEL, Kvm
from tests.conftest import PROJECT


def test_every_setting_is_documented() -> None:
    """README's option tables have a row for every run option, and docs/units.md's table one for every
    setting only units take: a setting added to the table shows where its docs are missing."""
    readme_rows = [line for line in (PROJECT / "README.md").read_text().splitlines() if line.startswith("| `-")]
    documented = {name for row in readme_rows for name in re.findall(r"`(--[\w-]+)", row.split(" | ")[0])}
    unit_rows = [line for line in (PROJECT / "docs/units.md").read_text().splitlines() if line.startswith("| `")]
    unit_keys = {key for row in unit_rows for key in re.findall(r"`(\w+)[ `]", row.split(" | ")[0])}
    for setting in all_settings().values():
        if RUN in setting.front_ends and not setting.positional:
            assert setting.flag in documented, f"README.md has no row for {setting.flag}"
        elif setting.front_ends == {UNITS} and not setting.positional:
            assert setting.dest in unit_keys, f"docs/units.md has no row for {setting.dest}"


def test_the_commands_options_are_the_tables_rows() -> None:
    """run's click options, the stage1s' among them, and generate's unit-only ones carry each row's
    spellings and help."""
    for command, rows in (
        ("run", [*runcommand.RUN_OPTIONS, *runcommand.stage1_options()]),
        ("generate", runcommand.unit_options(SETTINGS_TABLE)),
    ):
        found = commands.main.get_command(click.Context(commands.main), command)
        assert found is not None
        params = {param.name: param for param in found.params}
        for row in rows:
            assert tuple(params[row.dest].opts) == row.names and getattr(params[row.dest], "help", "") == row.help


def test_the_kvm_stage1s_settings_are_its_own() -> None:
    """kvm declares --kvm-accel and --kvm-kernel: the shared table does not have them, stage0 finds them
    (a spec file's keys, run's fast parser), and the spec carries what is given, by key."""
    assert Kvm.settings == (ACCEL, KERNEL) and {"kvm_accel", "kvm_kernel"}.isdisjoint(SETTINGS)
    assert {ACCEL, KERNEL} <= set(stage1_settings())
    read = runcommand.parse(["run", "--kvm-accel", "tcg", "--rootfs", "/", "true"])
    assert read is not None and read.options == {"kvm_accel": "tcg", "rootfs": Path("/")}
    settings = check_settings({"rootfs": "/", "kvm_accel": "tcg"}, "test", all_settings())
    spec = build_spec(settings, default_name="p", default_stage1="kvm")
    assert spec.stage1_settings == {"kvm_accel": "tcg"}
    assert (field_value(spec, ACCEL), field_value(spec, KERNEL)) == ("tcg", None)  # the row's default
    assert spec_from_arguments([f"--{key}={value}" for key, value in spec_settings(spec)], "namespace") == spec


def test_a_pod_json_of_before_keeps_its_kvm_settings() -> None:
    """pod.json of a pod made when kvm_accel and kvm_kernel were fields of the spec."""
    data = PodSpec(name="p", stage1="kvm", rootfs="/").to_json()
    del data["stage1_settings"]
    spec = PodSpec.from_json(data | {"kvm_accel": "tcg", "kvm_kernel": "/boot/vmlinuz"})
    assert (field_value(spec, ACCEL), field_value(spec, KERNEL)) == ("tcg", "/boot/vmlinuz")


def test_a_stage1_refuses_the_shared_settings_it_does_not_honour() -> None:
    """fly honours none of the isolation settings; kvm's guest honours those of its /etc, its mounts
    and its init, and none that confine a process on the host."""
    spec = PodSpec(name="p", stage1="x", isolation=Isolation(hostname="h", cap_add=("ALL",), sysctl=("a.b=1",)))
    assert not_honoured(spec, SETTINGS_TABLE, "namespace") == {}
    kvm = not_honoured(spec, SETTINGS_TABLE, "kvm")
    assert list(kvm) == ["--cap-add", "--cap-drop", "--seccomp", "--private-users", "--device", "--selinux-type",
                         "--apparmor"] and kvm["--cap-add"] and not kvm["--cap-drop"]  # fmt: skip
    fly = not_honoured(spec, SETTINGS_TABLE, "fly")
    assert list(fly) == [row.flag for row in SETTINGS_TABLE if (row.field or "").startswith("isolation.")]
    assert [flag for flag, given in fly.items() if given] == ["--hostname", "--cap-add", "--sysctl"]


def test_the_settings_an_image_gives_are_those_its_rows_say() -> None:
    """apply_image_config changes exactly the settings whose rows say an image has a say in them."""
    config = {
        "config": {
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "true"],
            "Env": ["A=1"],
            "WorkingDir": "/srv",
            "User": "web",
            "Labels": {"k": "v"},
            "StopSignal": "SIGINT",
        }
    }
    spec = PodSpec(name="p", stage1="namespace", rootfs="/", app=AppSpec(env={}))
    merged = apply_image_config(spec, config)
    changed = {row.dest for row in SETTINGS_TABLE if row.field and field_value(merged, row) != field_value(spec, row)}
    # entrypoint is folded into exec (the argv), and so left as none
    assert changed | {"entrypoint"} == {row.dest for row in SETTINGS_TABLE if row.image != IMAGE_NONE}
