"""Registry credentials: `sdrun image login` writes <root>/auth.json (0600); docker's and podman's files are read too.

All files share docker's format: {"auths": {"HOST": {"auth": base64("USER:PASSWORD")}}}.
Credential helpers (credsStore, credHelpers) are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from sdrun.errors import SdrunError
from sdrun.files import write_atomically

DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/")


def auth_files(own: Path) -> list[Path]:
    """Where credentials are looked up, first match wins: sdrun's own file, then podman's, then docker's."""
    files = [own]
    if "REGISTRY_AUTH_FILE" in os.environ:
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if "XDG_RUNTIME_DIR" in os.environ:
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = Path(os.path.expanduser("~"))
    files += [home / ".config" / "containers" / "auth.json", home / ".docker" / "config.json"]
    return files


def _keys_for(host: str) -> tuple[str, ...]:
    if host in DOCKER_HUB_KEYS:
        return DOCKER_HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise SdrunError(f"cannot read credentials from {path}: {error}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    return auths if isinstance(auths, dict) else {}


def credentials_for(host: str, files: list[Path]) -> tuple[str, str] | None:
    for path in files:
        auths = _read(path)
        for key in _keys_for(host):
            entry = auths.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    raise SdrunError(f"{path}: the credentials for {key} are not valid base64") from None
                return user, password
    return None


def save_credentials(path: Path, host: str, user: str, password: str | None) -> None:
    """Record (or, with password None, forget) a login; the file is 0600 from its first byte."""
    auths = _read(path)
    if password is None:
        if auths.pop(host, None) is None:
            raise SdrunError(f"not logged in to {host}")
    else:
        auths[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"auths": auths}, indent=2) + "\n", mode=0o600)
