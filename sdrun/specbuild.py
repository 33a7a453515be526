"""A pod's spec from its settings, with what its stage1 decides: stage0's side of the settings table.

sdrun.spec holds the shared settings and puts a spec together; the stage1s add
their own settings (Stage1.settings) and their defaults (Stage1.default_network).
Only stage0 looks the stage1 up (Stage1.named), here: sdrun.spec, which the
stage1s import, imports no stage1 (tests/test_imports.py checks that sdrun and
stage1 import each other in no circle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdrun.settings import Setting, by_key
from sdrun.spec import SETTINGS_TABLE, assemble_spec
from stage1.interface import BUILTIN_BACKENDS, Stage1

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sdrun.spec import PodSpec


def stage1_settings() -> tuple[Setting, ...]:
    """The own settings of every stage1 stage0 knows: the built-in ones (imported for it) and any
    other registered."""
    names = dict.fromkeys([*BUILTIN_BACKENDS, *Stage1.registry])
    return tuple(setting for name in names for setting in Stage1.named(name).settings)


def all_settings() -> dict[str, Setting]:
    """The whole settings table, by key: the shared settings, then the stage1s' own."""
    return by_key((*SETTINGS_TABLE, *stage1_settings()))


def needs_stage1_settings(raw: Mapping[str, object]) -> bool:
    """Whether raw names a key the shared table does not have (a stage1's, or an unknown one):
    only then are the stage1s imported for their settings."""
    from sdrun.spec import SETTINGS

    return any(key not in SETTINGS for key in raw)


def settings_table(raw: Mapping[str, object]) -> Mapping[str, Setting]:
    """The table to check raw with: the shared one, unless raw needs the stage1s' too."""
    from sdrun.spec import SETTINGS

    return all_settings() if needs_stage1_settings(raw) else SETTINGS


def build_spec(settings: Mapping[str, Any], *, default_name: str, default_stage1: str) -> PodSpec:
    """Assemble a PodSpec from checked settings (spec file values overridden by flags); the
    network its stage1 gives a pod that names none."""
    stage1 = settings.get("stage1", default_stage1)
    net = settings.get("net") or Stage1.named(stage1).default_network
    table = all_settings().values() if needs_stage1_settings(settings) else SETTINGS_TABLE
    return assemble_spec(settings, table, name=default_name, stage1=stage1, net=net)
