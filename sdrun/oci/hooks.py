"""config.json's hooks: programs the runtime runs at points of the lifecycle, the state on their stdin.

prestart and createRuntime run in the runtime's namespaces once the container's namespaces exist and
before its mounts and pivot_root (the init waits for them); a failure fails `create`. poststart runs
after `start` let the app go, poststop at `delete`: their failures are logged, and the lifecycle goes
on, as the runtime spec says. createContainer and startContainer, which run inside the container,
are refused (not yet).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, NamedTuple

from sdrun.errors import SdrunError

RUNTIME_NAMESPACE_HOOKS = ("prestart", "createRuntime", "poststart", "poststop")
CONTAINER_NAMESPACE_HOOKS = ("createContainer", "startContainer")


class Hook(NamedTuple):
    path: str
    args: list[str]
    env: list[str]
    timeout: int | None


def parse(hooks: dict[str, Any]) -> dict[str, list[Hook]]:
    """The hooks object of config.json, by point; any other point is refused."""
    parsed: dict[str, list[Hook]] = {}
    for point, entries in hooks.items():
        if not entries:
            continue
        if point not in RUNTIME_NAMESPACE_HOOKS:
            known = point in CONTAINER_NAMESPACE_HOOKS
            raise SdrunError(f"config.json: hooks.{point} is {'not supported yet' if known else 'not a hook point'}")
        parsed[point] = [_hook(point, entry) for entry in entries]
    return parsed


def _hook(point: str, entry: dict[str, Any]) -> Hook:
    path = str(entry["path"])
    if not path.startswith("/"):
        raise SdrunError(f"config.json: hooks.{point}: path '{path}' is not absolute")
    timeout = entry.get("timeout")
    if timeout is not None and int(timeout) <= 0:
        raise SdrunError(f"config.json: hooks.{point}: timeout must be positive")
    return Hook(path, [str(arg) for arg in entry.get("args") or [path]], [str(e) for e in entry.get("env") or []],
                None if timeout is None else int(timeout))  # fmt: skip


def to_json(hooks: dict[str, list[Hook]]) -> dict[str, list[list[Any]]]:
    return {point: [list(hook) for hook in entries] for point, entries in hooks.items()}


def from_json(data: dict[str, list[list[Any]]]) -> dict[str, list[Hook]]:
    return {point: [Hook(*fields) for fields in entries] for point, entries in data.items()}


def run(point: str, hooks: dict[str, list[Hook]], state: dict[str, Any], *, fatal: bool) -> None:
    """Run the point's hooks in order, the state JSON on stdin. fatal: a failure raises (prestart,
    createRuntime); otherwise it is written to stderr as a warning and the next hook runs."""
    for hook in hooks.get(point, []):
        try:
            _run_one(point, hook, state)
        except SdrunError as error:
            if fatal:
                raise
            sys.stderr.write(f"sdrun-oci: warning: {error.message}\n")


def _run_one(point: str, hook: Hook, state: dict[str, Any]) -> None:
    try:
        result = subprocess.run(
            hook.args,
            executable=hook.path,
            input=json.dumps(state).encode(),
            env=dict(item.partition("=")[::2] for item in hook.env),
            capture_output=True,
            timeout=hook.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SdrunError(f"{point} hook {hook.path} timed out after {hook.timeout} s") from None
    except OSError as error:
        raise SdrunError(f"{point} hook {hook.path}: {error.strerror}") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise SdrunError(f"{point} hook {hook.path} exited {result.returncode}" + (f": {detail[-1]}" if detail else ""))
