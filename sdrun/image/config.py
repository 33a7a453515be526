"""An image's config as the defaults of a pod's spec; what the user gave on the command line wins.

As docker does it: the argv is Entrypoint + Cmd; a command after IMAGE replaces Cmd and
keeps Entrypoint; --entrypoint replaces Entrypoint and drops Cmd. Env, Labels: the
image's, then the user's over them. WorkingDir, User, StopSignal: the user's if given.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

from sdrun.errors import SpecError
from sdrun.spec import DEFAULT_PATH, PodSpec, parse_stop_signal


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    if isinstance(value, str):  # a shell-form string some tools write: docker runs it with /bin/sh -c
        return ("/bin/sh", "-c", value)
    return ()


def image_env(config: Mapping[str, Any]) -> dict[str, str]:
    env = {}
    for item in config.get("Env") or ():
        key, sep, value = str(item).partition("=")
        if key and sep:
            env[key] = value
    return env


def _stop_signal(value: object) -> str | None:
    text = str(value or "").strip()
    if not text:
        return None
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            return None
    try:
        return parse_stop_signal(text)
    except SpecError:
        return None  # an image's odd StopSignal is not worth refusing the pod: systemd's default applies


def exposed_ports(config: Mapping[str, Any]) -> list[str]:
    ports = (config.get("config") or {}).get("ExposedPorts") or {}
    return sorted(str(port) for port in ports) if isinstance(ports, dict) else []


def apply_image_config(spec: PodSpec, image_config: Mapping[str, Any]) -> PodSpec:
    config = image_config.get("config") or {}
    if spec.app.entrypoint is not None:
        argv = spec.app.entrypoint + spec.app.argv
    else:
        argv = _strings(config.get("Entrypoint")) + (spec.app.argv or _strings(config.get("Cmd")))
    user_env = dict(spec.app.env)
    env = image_env(config)
    if "PATH" in env and user_env.get("PATH") == DEFAULT_PATH:
        del user_env["PATH"]  # sdrun's default PATH gives way to the image's; a PATH the user set does not
    workdir = config.get("WorkingDir") if isinstance(config.get("WorkingDir"), str) else None
    app = spec.app._replace(
        argv=argv,
        env=env | user_env,
        workdir=spec.app.workdir or (workdir if workdir and workdir.startswith("/") else None),
        user=spec.app.user or config.get("User") or None,
        entrypoint=None,
    )
    labels = {str(key): str(value) for key, value in (config.get("Labels") or {}).items()}
    return spec._replace(
        app=app,
        labels=labels | spec.labels,
        stop_signal=spec.stop_signal or _stop_signal(config.get("StopSignal")),
    )
