"""GPG simple signing: verify a signature blob (an OpenPGP signed message) against trusted keys.

GnuPG's own binaries do it: `gpg --import` of the policy's keys (binary, armored or both in one
file) into a throwaway GNUPGHOME, exported as one binary keyring for `gpgv`, which verifies the
blob and writes out the signed payload. gpgv's exit status is not the verdict: it exits 0 for a
good signature by an expired key or a revoked subkey. Its --status-fd lines are: exactly one
VALIDSIG, whose primary key is one imported, and none of BADSIG, ERRSIG, EXPSIG, EXPKEYSIG,
REVKEYSIG, NO_PUBKEY.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError

TIMEOUT = 30.0
REFUSING_STATUSES = ("BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY")


class SignatureRefused(SdrunError):
    """A signature that does not verify against the trusted keys (the message says why)."""


class Verified(NamedTuple):
    payload: bytes
    fingerprint: str  # of the signing key's primary key


def _run(argv: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, input=data, capture_output=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise SdrunError(
            f"{argv[0]} is not installed: GPG signatures cannot be verified", hint="apt install gpgv gpg"
        ) from None
    except subprocess.TimeoutExpired:
        raise SdrunError(f"{argv[0]} did not finish in {TIMEOUT:.0f} s") from None


def _status(output: bytes) -> list[list[str]]:
    lines = []
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("[GNUPG:] "):
            lines.append(line.split()[1:])
    return lines


def key_fingerprints(keys: list[bytes]) -> list[str]:
    """The primary key fingerprints of key material (what `image trust add` shows before trusting)."""
    with tempfile.TemporaryDirectory(prefix="sdrun-gpg-") as home:
        return _import(Path(home), keys)


def _import(home: Path, keys: list[bytes]) -> list[str]:
    os.chmod(home, 0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--no-autostart", "--no-tty", "--quiet"]
    for key in keys:
        _run([*gpg, "--import"], key)  # a bad key imports nothing: no fingerprint below
    listed = _run([*gpg, "--with-colons", "--fixed-list-mode", "--list-keys"])
    fingerprints, primary = [], False
    for line in listed.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            fingerprints.append(fields[9])
            primary = False
    return fingerprints


def verify(keys: list[bytes], blob: bytes) -> Verified:
    """The payload of blob if a key of keys made it and no status line objects; else SignatureRefused."""
    with tempfile.TemporaryDirectory(prefix="sdrun-gpg-") as directory:
        home = Path(directory)
        trusted = _import(home, keys)
        if not trusted:
            raise SignatureRefused("no public key could be imported from the policy's keys")
        keyring = home / "trusted.gpg"
        exported = _run(["gpg", "--homedir", str(home), "--batch", "--no-autostart", "--export", *trusted])
        keyring.write_bytes(exported.stdout)
        (home / "signature").write_bytes(blob)
        result = _run(
            ["gpgv", "--homedir", str(home), "--keyring", str(keyring), "--status-fd", "1",
             "--output", str(home / "payload"), str(home / "signature")]
        )  # fmt: skip
        statuses = _status(result.stdout)
        _refuse_on(statuses, result)
        valid = [status for status in statuses if status[0] == "VALIDSIG"]
        if len(valid) != 1:
            raise SignatureRefused(f"{len(valid)} valid signatures in one blob, not 1")
        fingerprint = valid[0][10] if len(valid[0]) > 10 else valid[0][1]
        if fingerprint not in trusted:
            raise SignatureRefused(f"signed by key {fingerprint}, which the policy does not trust")
        try:
            payload = (home / "payload").read_bytes()
        except OSError:
            raise SignatureRefused("gpgv wrote no payload") from None
        return Verified(payload, fingerprint)


def _refuse_on(statuses: list[list[str]], result: subprocess.CompletedProcess[bytes]) -> None:
    for status in statuses:
        keyword, rest = status[0], status[1:]
        key = rest[0] if rest else "?"
        if keyword == "EXPKEYSIG":
            raise SignatureRefused(f"signed by key {key}, which has expired")
        if keyword == "REVKEYSIG":
            raise SignatureRefused(f"signed by key {key}, which is revoked")
        if keyword == "EXPSIG":
            raise SignatureRefused(f"the signature by key {key} has expired")
        if keyword == "BADSIG":
            raise SignatureRefused(f"bad signature by key {key}: the signed data was altered")
        if keyword in ("NO_PUBKEY", "ERRSIG"):
            raise SignatureRefused(f"signed by key {key}, which the policy does not trust")
    if result.returncode != 0 or not any(status[0] == "VALIDSIG" for status in statuses):
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise SignatureRefused(f"not a valid signature: {lines[-1] if lines else 'gpgv found none'}")
