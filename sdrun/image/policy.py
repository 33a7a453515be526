"""<root>/policy.json: which registries pulls may use, and which manifest digests a repository must have.

    {
      "trusted": ["127.0.0.1:5000", "registry.example.org/team"],
      "pinned": {"127.0.0.1:5000/app": ["sha256:<64 hex>", ...]}
    }

"trusted" (optional): a pull from a registry must name an entry: a HOST[:PORT] covers every
repository there, HOST/PATH that repository and those below it. Without the key, any registry.
"pinned" (optional): a pull of a repository listed there must arrive as one of its digests:
the manifest's, or that of the index the manifest was chosen from.

What this verifies is content, not origin: a digest the policy (or an @sha256: reference)
pins makes the bytes exact, since every blob is checked against the manifest's digests.
Signatures (GPG, sigstore/cosign) are not checked. The policy applies to what enters the
store from a registry (pulls, and run's pulls of absent images); not to archives or layouts,
and not to what is already in the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from sdrun.errors import SdrunError
from sdrun.image.reference import DIGEST_PATTERN, RegistryReference


class PolicyError(SdrunError):
    """The policy refuses a pull, or cannot be read."""


class Policy(NamedTuple):
    path: Path
    exists: bool = False
    trusted: tuple[str, ...] | None = None  # None: any registry
    pinned: dict[str, frozenset[str]] = {}  # noqa: RUF012 - never mutated. HOST/REPO -> digests

    def check_registry(self, reference: RegistryReference) -> None:
        """Before anything is asked of the registry: is it one the policy trusts?"""
        if self.trusted is None:
            return
        repository = f"{reference.host}/{reference.repository}"
        if not any(repository == entry or repository.startswith(entry.rstrip("/") + "/") for entry in self.trusted):
            raise PolicyError(f"policy: {repository} is not in a trusted registry of {self.path}")

    def check_digests(self, reference: RegistryReference, digests: tuple[str, ...], *, verify: bool) -> None:
        """Before any blob is fetched: do the digests the registry sent (index, manifest) meet the pins?
        With verify, the image must be pinned: by the policy, or by the reference's own digest."""
        repository = f"{reference.host}/{reference.repository}"
        pins = self.pinned.get(repository)
        if pins is not None:
            if not pins.intersection(digests):
                raise PolicyError(f"policy: {reference.name} is {digests[-1]}, which {self.path} does not pin")
            return
        if verify and reference.digest is None:
            where = f"{self.path} lists no digests for {repository}" if self.exists else f"there is no {self.path}"
            raise PolicyError(
                f"--verify: nothing pins {reference.name}: {where}",
                hint="pull it by @sha256: digest, or pin its digests in the policy",
            )


def load_policy(path: Path) -> Policy:
    """The policy at path; an empty one (anything goes) if there is no file."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Policy(path)
    except (OSError, ValueError) as error:
        raise PolicyError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict) or set(data) - {"trusted", "pinned"}:
        raise PolicyError(f"{path}: expected an object with 'trusted' and/or 'pinned'")
    trusted = data.get("trusted")
    if trusted is not None and not (isinstance(trusted, list) and all(isinstance(e, str) and e for e in trusted)):
        raise PolicyError(f"{path}: 'trusted' must be a list of HOST[:PORT][/PATH] strings")
    pinned = data.get("pinned", {})
    if not isinstance(pinned, dict):
        raise PolicyError(f"{path}: 'pinned' must map HOST/REPO to lists of digests")
    for repository, digests in pinned.items():
        valid = isinstance(digests, list) and all(isinstance(d, str) and DIGEST_PATTERN.fullmatch(d) for d in digests)
        if not valid:
            raise PolicyError(f"{path}: the pins of {repository} must be a list of sha256:<64 hex> digests")
    return Policy(
        path,
        True,
        tuple(trusted) if trusted is not None else None,
        {repository: frozenset(digests) for repository, digests in pinned.items()},
    )
