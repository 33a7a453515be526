"""Importing a library's submodules without running its package __init__."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys


def skip_package_init(name: str) -> None:
    """Register package `name` as a bare package over its directory, so that importing its
    submodules does not run its __init__, which in dbus-next imports front-ends
    and subsystems sdrun never uses (~40 ms each). Call it before the first import of `name`."""
    if name in sys.modules:
        return
    found = importlib.util.find_spec(name)  # a top-level package: found, not imported
    if found is None or found.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed")
    bare = importlib.machinery.ModuleSpec(name, None, origin=found.origin, is_package=True)
    bare.submodule_search_locations = list(found.submodule_search_locations)
    sys.modules[name] = importlib.util.module_from_spec(bare)
