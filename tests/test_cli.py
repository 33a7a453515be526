"""Pure logic of the command line: `sdrun run` read without click agrees with click, and the
path of every container start imports neither click nor dataclasses. No systemd needed."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import click
import pytest

from sdrun.cli import commands, runcommand
from sdrun.pod import new_uuid
from stage1.interface import BUILTIN_BACKENDS
from tests.conftest import PROJECT, SDRUN

PLAIN_RUN_LINES = [
    ["--rm", "--stage1", "fly", "--rootfs", "/srv/root", "--", "/bin/true"],
    ["--rootfs=/srv/root", "-d", "--name", "web", "/bin/sh", "-c", "echo $HOME"],
    ["-e", "A=1", "--env", "B=2", "-v", "/a:/b:ro", "--volume=/c:/d", "busybox", "--", "ls", "-l"],
    ["--memory", "256M", "--cpus=0.5", "--read-only", "--init", "--tmpfs", "/run", "--scope", "img"],
    ["--cap-add", "NET_ADMIN", "--cap-drop=ALL", "-u", "1000", "-w", "/tmp", "-p", "8080:80", "img"],
    ["--spec", "pod.toml"],
    ["--name", "-starts-with-a-dash", "img"],  # a value is taken whatever it looks like, as click does
    ["img", "--rm", "-d"],  # after IMAGE, options are the command's
    ["--private-users", "img"],  # its value may be left out, and is given only after '='
    ["--private-users=300000:65536", "--private-users", "-d", "img"],
    [],
]
LEFT_TO_CLICK = [
    ["--help"],
    ["-h"],
    ["-dt", "img"],  # short flags run together
    ["--tls-verify=false", "img"],
    ["--no-such-option", "img"],
    ["--name"],  # the value is missing
    ["--rm=yes", "img"],  # a flag with a value
]


def click_reading(argv: list[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """What the click command makes of `sdrun run ARGV`: the options given, and the arguments."""
    command = commands.main.commands["run"]
    with command.make_context("run", list(argv)) as context:
        params = dict(context.params)
        args = params.pop("args")
        return commands.given_options(context, params), args


@pytest.mark.parametrize("argv", PLAIN_RUN_LINES)
def test_run_without_click_reads_a_command_line_as_click_does(argv: list[str]) -> None:
    read = runcommand.parse(["run", *argv])
    assert read is not None
    assert (read.options, read.args) == click_reading(argv)


@pytest.mark.parametrize(
    ("argv", "value", "args"),
    [
        (["--private-users", "img", "--private-users", "x"], "auto", ("img", "--private-users", "x")),
        (["-p80:80", "-e", "--private-users", "--private-users", "img"], "auto", ("img",)),  # -e's value, then it
        (["-p80:80", "--name", "--private-users", "img"], None, ("img",)),  # the name's value
        (["--private-users=1000000:65536", "img"], "1000000:65536", ("img",)),
    ],
)
def test_private_users_takes_a_value_only_after_equals(argv: list[str], value: str | None, args: tuple[str]) -> None:
    options, read = click_reading(argv)
    assert (options.get("private_users"), read) == (value, args)
    assert click_reading(["-dp", "80:80", *argv])[0].get("private_users") == value  # short options run together
    help_text = subprocess.run([SDRUN, "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert "  --private-users[=auto|UID:COUNT]" in help_text
    with commands.main.commands["generate"].make_context("generate", list(argv)) as context:  # the same options
        assert (context.params["private_users"], context.params["args"]) == (value, args)
    with commands.main.commands["install"].make_context("install", ["--private-users", "web", *argv]) as context:
        assert (context.params["private_users"], context.params["pod_name"]) == (value or "auto", "web")


@pytest.mark.parametrize("argv", LEFT_TO_CLICK)
def test_anything_unusual_is_left_to_click(argv: list[str]) -> None:
    assert runcommand.parse(["run", *argv]) is None


def test_the_root_before_the_verb_and_other_verbs() -> None:
    read = runcommand.parse(["--root", "/r", "run", "--rootfs", "/x", "/bin/true"])
    assert read is not None and read.root == "/r" and read.options == {"rootfs": Path("/x")}
    assert runcommand.parse(["--root=/r", "run", "img"]) == runcommand.RunCommandLine("/r", {}, ("img",))
    for argv in (["list"], ["--debug", "run", "img"], ["--root"], [], ["--rootx", "run"]):
        assert runcommand.parse(argv) is None


def test_every_run_option_is_a_click_option_with_its_help() -> None:
    params = {param.name: param for param in commands.main.commands["run"].params}
    for option in runcommand.RUN_OPTIONS:
        param = params[option.dest]
        assert isinstance(param, click.Option)
        assert tuple(param.opts) == option.names and param.help == option.help


def test_a_run_imports_neither_click_nor_dataclasses() -> None:
    """Every container start pays for these imports: the path of `sdrun run` leaves out the heavy ones."""
    hot_path = (
        "import sys; from sdrun.cli import runcommand; import sdrun.run, stage1.fly.backend, stage1.namespace.backend;"
        "from sdrun.linux import seccomp; print(' '.join(sys.modules))"
    )
    modules = set(
        subprocess.run([sys.executable, "-c", hot_path], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "sdrun.run" in modules
    assert not {"click", "dataclasses", "inspect", "uuid", "sdrun.cli.commands"} & modules


def test_new_uuids_are_random_rfc_4122_version_4_ones() -> None:
    made = [new_uuid() for _ in range(500)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_the_readme_documents_every_run_option_and_stage1() -> None:
    """Every option `sdrun run --help` lists has a row in one of the README's option tables."""
    help_text = subprocess.run([SDRUN, "run", "--help"], capture_output=True, text=True, check=True).stdout
    options = set(re.findall(r"^  (?:-\w, )?(--[\w-]+)", help_text, re.MULTILINE)) - {"--help"}
    assert "--rootfs" in options and "--verify" in options
    rows = [line for line in (PROJECT / "README.md").read_text().splitlines() if line.startswith("| `-")]
    documented = {name for row in rows for name in re.findall(r"`(--[\w-]+)", row.split(" | ")[0])}
    assert options - documented == set()
    (stage1_row,) = [row for row in rows if row.startswith("| `--stage1 NAME`")]
    assert all(f"`{name}`" in stage1_row for name in BUILTIN_BACKENDS)
