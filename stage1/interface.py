"""The stage1 interface as stage0 uses it: backends, their registry, what they plan.

stage0 (the `sdrun` CLI) prepares a pod directory; a stage1 backend turns it
into what systemd runs. Backends register themselves by subclassing Stage1 with
a `name=`; stage0 looks them up by that name and never branches on it. One
outside sdrun is found by the entry point of its distribution in the group
`sdrun.stage1` (ENTRY_POINT_GROUP), whose name is the backend's and whose value
the module to import. docs/stage1.md documents the contract and its versions.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple, NoReturn

import stage1
from sdrun.errors import SdrunError, SpecError, describe
from stage1 import INTERFACE_VERSION, entry_pod_dir, fail, sealed

if TYPE_CHECKING:
    from sdrun.pod import Pod
    from sdrun.settings import Setting
    from sdrun.spec import PodSpec
    from sdrun.systemd.bus import Property
    from stage1.process import AppChanges

# Backends shipped with sdrun, by name: Stage1.named() imports only the one a pod uses,
# since each pulls in its own dependencies (seccomp, qemu helpers...).
BUILTIN_BACKENDS = {"fly": "stage1.fly.backend", "namespace": "stage1.namespace.backend", "kvm": "stage1.kvm.backend"}
# A backend of another distribution: `[project.entry-points."sdrun.stage1"] NAME = "MODULE"`, MODULE
# being the one whose import registers it (its `Stage1` subclass with name="NAME").
ENTRY_POINT_GROUP = "sdrun.stage1"


class UnitPlan(NamedTuple):
    """What a backend asks systemd to run for a pod's service unit."""

    executable: str  # absolute path of the unit's main process
    argv: tuple[str, ...]  # its argv, argv[0] included
    properties: tuple[Property, ...] = ()  # backend-specific unit properties, Type= among them


class EnterTerminal(NamedTuple):
    """`sdrun enter -t` (the default on a terminal), for a stage1 that makes the terminal inside
    the pod (Stage1.enter_terminal): the socket to send its master on, and which of the command's
    stdin, stdout and stderr its slave becomes (those that were the caller's terminals, which the
    command must never get)."""

    channel: int  # an inherited descriptor of the enter child's
    stdio: tuple[int, ...]  # a subset of (0, 1, 2), never empty


class Stage1:
    name: ClassVar[str]
    interface_version: ClassVar[int] = INTERFACE_VERSION
    default_network: ClassVar[str] = "none"  # a pod's --net when it gives none (see sdrun.net)
    # The backend's own settings: rows of the settings table (sdrun.settings), which stage0 adds to the
    # shared ones; their values are in PodSpec.stage1_settings, read with sdrun.settings.field_value.
    settings: ClassVar[tuple[Setting, ...]] = ()
    passes_stdin: ClassVar[bool] = True  # the app reads the unit's stdin (`run -i`)
    # enter makes the command's terminal inside the pod (EnterTerminal); else stage0 makes one on
    # the host, which only a stage1 that shares the host's devpts (fly) or runs nothing on it (kvm)
    # may take.
    enter_terminal: ClassVar[bool] = False
    registry: ClassVar[dict[str, type[Stage1]]] = {}

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        Stage1.registry[name] = cls

    @classmethod
    def named(cls, name: str) -> Stage1:
        if name not in cls.registry:
            module = BUILTIN_BACKENDS.get(name) or installed_backends().get(name)
            if module is not None:
                import_backend(name, module)  # registers it; only this one is loaded
        backend = cls.registry.get(name)
        if backend is None:
            known = sorted(set(BUILTIN_BACKENDS) | set(installed_backends()) | set(cls.registry))
            raise SpecError(f"unknown stage1 '{name}'", hint=f"available: {', '.join(known)}")
        if backend.interface_version > INTERFACE_VERSION:
            raise SpecError(
                f"stage1 '{name}' needs interface version {backend.interface_version}, "
                f"and this sdrun implements version {INTERFACE_VERSION}"
            )
        return backend()

    def refuse_unsupported(self, spec: PodSpec) -> None:
        """Raise SpecError for a setting the backend cannot honour, before anything exists (the
        --scope path makes its scope before the backend runs); plan() checks again, for units."""

    def plan(self, pod: Pod) -> UnitPlan:
        """The main process and properties of the pod's transient service."""
        raise NotImplementedError

    def terminal_plan(self, pod: Pod) -> UnitPlan:
        """plan() for `run -t`: the unit's stdin is a socket, on which the app's stage1 sends the
        master of a pseudo-terminal that it made the app's controlling terminal and stdio."""
        raise SpecError(f"-t: the {self.name} stage1 cannot give the app a terminal", hint="--stage1 namespace")

    def scope_properties(self, pod: Pod) -> tuple[Property, ...]:
        """The backend's own properties of the pod's transient scope (`sdrun run --scope`): those
        of its service's that a scope takes too (devices, stopping); a scope runs no commands."""
        return ()

    def exec_in_scope(self, pod: Pod) -> NoReturn:
        """Run in a child of the CLI already placed in the pod's scope: isolate, then exec the app."""
        raise NotImplementedError

    def enter(
        self,
        pod: Pod,
        leader: int,
        argv: list[str],
        changes: AppChanges | None = None,
        terminal: EnterTerminal | None = None,
    ) -> NoReturn:
        """Run in a forked child already attached to the pod's cgroup: join the pod, exec argv as the
        app is run, with `changes` (enter -u, -e, -w: stage1.app.changed_app) to its planned fields.
        terminal: only for an enter_terminal backend, which gives argv a terminal of the pod's."""
        raise NotImplementedError

    def gc(self, pod: Pod) -> None:
        """Release whatever the backend left on the host for a pod that has ended."""


def installed_backends() -> dict[str, str]:
    """The backends other distributions declare (ENTRY_POINT_GROUP): name -> module. Read only for a
    name that is not built in: scanning the installed distributions' metadata takes milliseconds."""
    from importlib.metadata import entry_points

    return {point.name: point.module for point in entry_points(group=ENTRY_POINT_GROUP)}


def import_backend(name: str, module: str) -> None:
    """Import the module that registers backend `name`, in one line if it is broken."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise SpecError(f"stage1 '{name}': cannot import {module}: {error}") from None
    if name not in Stage1.registry:
        raise SpecError(f"stage1 '{name}': {module} registers no stage1 of that name")


def refuse_flags(given: dict[str, bool], why: str, hint: str | None = None) -> None:
    """Refuse the first flag given (see sdrun.settings.not_honoured): `FLAG <why>`."""
    for flag, present in given.items():
        if present:
            raise SpecError(f"{flag} {why}", hint=hint)


# How a unit starts an entry: `python -S -P -c PROGRAM run --interface=N POD_DIR`, where PROGRAM
# puts the directory sdrun is installed in on sys.path and imports MODULE.__main__, which runs the
# entry. -S skips site (the virtualenv's .pth files and import hooks) and -c skips the runpy that -m
# would import: ~6 ms of every container start. An entry imports the standard library and sdrun's
# own packages only; -P keeps the unit's working directory off sys.path. PROGRAM is one expression,
# with no `;`: systemd 252 writes a `;` of a command line into the transient unit's file as `\;`,
# which it reads back at a daemon-reload as those two characters (and a newline would break the
# command's line in `systemctl show`).
ENTRY_PROGRAM = "__import__('sys').path.insert(0, {directory!r}) or __import__('{module}.__main__')"
# For a backend installed elsewhere than sdrun: its directory goes on sys.path too, after sdrun's.
ENTRY_PATH = "__import__('sys').path.insert(0, {directory!r}) or "


def entry_command(module: str, pod: Pod) -> tuple[str, tuple[str, ...]]:
    """The unit's main process for a backend whose entry is MODULE.__main__ (also `python -m MODULE`).

    The interpreter is the one that runs stage0 (sys.executable: the venv's, never a pyenv shim),
    from its sealed view (stage1.sealed: a pod must never reach a writable host file as
    /proc/self/exe), which stage0 mounts before it starts the unit (ensure_unit_interpreter)."""
    directory = os.path.dirname(os.path.dirname(os.path.abspath(stage1.__file__)))  # holds sdrun and stage1
    program = ENTRY_PROGRAM.format(directory=directory, module=module)
    own = module_directory(module)
    if own != directory:
        program = ENTRY_PATH.format(directory=own) + program
    python = sealed.executable()
    argv = (python, "-S", "-P", "-c", program, "run", f"--interface={INTERFACE_VERSION}", str(pod.dir))
    return python, argv


def module_directory(module: str) -> str:
    """The sys.path entry that module's top-level package is found in."""
    top = importlib.import_module(module.partition(".")[0])
    if top.__file__ is None:  # a namespace package: one of its directories
        return os.path.dirname(os.path.abspath(next(iter(top.__path__))))
    location = os.path.abspath(top.__file__)
    if os.path.basename(location) == "__init__.py":  # a package: its directory
        location = os.path.dirname(location)
    return os.path.dirname(location)


def ensure_unit_interpreter(plan: UnitPlan) -> None:
    """Mount the sealed interpreter the unit's main process runs from, if it does: right before a
    unit starts (`sdrun run`, an installed unit's ExecStartPre=), never when one is only written."""
    if plan.executable == sealed.executable():
        sealed.ensure()


def run_entry(argv: list[str], become_app: Callable[[Pod], NoReturn]) -> NoReturn:
    """The in-unit entry of a stage1: load the pod named on the command line and become its app."""
    from sdrun.pod import load_pod

    pod_dir = entry_pod_dir(argv)
    try:
        become_app(load_pod(Path(pod_dir)))
    except (SdrunError, OSError) as error:
        fail(describe(error))
