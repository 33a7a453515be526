"""`sdrun image ...`: the image store's verbs. Library imports wait inside each verb: `sdrun` starts lean."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sdrun.cli.commands import Context, main, pass_context
from sdrun.errors import SdrunError

if TYPE_CHECKING:
    from sdrun.image.store import Image, ImageStore
    from sdrun.image.transfer import PullOptions
    from sdrun.image.which import Match


def _store(ctx: Context) -> ImageStore:
    from sdrun.image.store import ImageStore

    return ImageStore(ctx.paths.images)


def _pull_options(
    platform: str | None,
    tls_verify: bool | None,
    quiet: bool,
    verify: bool = False,
    signature_policy: Path | None = None,
    registries_d: Path | None = None,
) -> PullOptions:
    from sdrun.image.oci import Platform
    from sdrun.image.transfer import PullOptions, default_progress

    return PullOptions(
        platform=Platform.parse(platform) if platform else None,
        tls_verify=tls_verify,
        progress=None if quiet else default_progress(),
        verify=verify,
        signature_policy=signature_policy,
        registries_d=registries_d,
    )


platform_option = click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="From a multi-platform image [host's].")
tls_option = click.option(
    "--tls-verify",
    type=click.BOOL,
    default=None,
    help="Verify the registry's certificate; false also allows plain HTTP [true, false on loopback].",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
signature_policy_option = click.option(
    "--signature-policy",
    type=click.Path(path_type=Path, dir_okay=False),
    help="containers-policy.json(5) to obey [/etc/containers/policy.json, if any].",
)
registries_d_option = click.option(
    "--registries.d",
    "registries_d",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where signatures are looked up, registries.d(5) [/etc/containers/registries.d].",
)


@main.group()
def image() -> None:
    """Manage images: an OCI store of verified blobs, and layer trees shared by pods."""


@image.command()
@platform_option
@tls_option
@click.option("--insecure-registry", is_flag=True, help="Same as --tls-verify=false.")
@click.option("--verify", is_flag=True, help="Refuse an image no digest pins (<root>/policy.json or @sha256:).")
@signature_policy_option
@registries_d_option
@quiet_option
@click.argument("source", metavar="SOURCE")
@pass_context
def pull(
    ctx: Context,
    platform: str | None,
    tls_verify: bool | None,
    insecure_registry: bool,
    verify: bool,
    signature_policy: Path | None,
    registries_d: Path | None,
    quiet: bool,
    source: str,
) -> None:
    """Pull an image: [docker://]HOST/REPO[:TAG|@DIGEST], oci:DIR[:REF], oci-archive:FILE, docker-archive:FILE.
    A registry pull obeys <root>/policy.json (trusted registries, pinned digests) when there is one, and
    the signature policy (containers-policy.json) when there is one."""
    from sdrun.image.transfer import pull as pull_image

    tls = False if insecure_registry else tls_verify
    options = _pull_options(platform, tls, quiet, verify, signature_policy, registries_d)
    pulled = pull_image(ctx.paths, source, options)
    click.echo(pulled.digest)


@image.command(name="import")
@click.option("--rootfs-tar", type=click.Path(path_type=Path, dir_okay=False), help="A plain rootfs tarball.")
@platform_option
@signature_policy_option
@quiet_option
@click.argument("args", metavar="SOURCE [NAME] | --rootfs-tar FILE NAME", nargs=-1, required=True)
@pass_context
def import_(
    ctx: Context,
    rootfs_tar: Path | None,
    platform: str | None,
    signature_policy: Path | None,
    quiet: bool,
    args: tuple[str, ...],
) -> None:
    """Import an image from oci:DIR, oci-archive:FILE or docker-archive:FILE (or a rootfs tarball), naming it NAME."""
    from sdrun.image.reference import parse_local_name
    from sdrun.image.store import ImageStore
    from sdrun.image.transfer import copy_image, import_admission, rootfs_source, source_for

    options = _pull_options(platform, None, quiet, signature_policy=signature_policy)
    if rootfs_tar is not None:
        if len(args) != 1:
            raise SdrunError("give the image's NAME: sdrun image import --rootfs-tar FILE NAME")
        source, name = rootfs_source(rootfs_tar, options.platform), args[0]
    elif len(args) in (1, 2):
        source, name = source_for(ctx.paths, args[0], tls_verify=None), (args[1] if len(args) == 2 else "")
    else:
        raise SdrunError("expected SOURCE [NAME]")
    names = (parse_local_name(name).name,) if name else source.names()
    if not names:
        raise SdrunError(f"{source.description} names no image: give a NAME", hint="sdrun image import SOURCE NAME")
    import_admission(source, options)
    imported = copy_image(ImageStore(ctx.paths.images), source, names, options)
    click.echo(imported.digest)


def _created(image: Image) -> str:
    return str(image.config.get("created") or "")[:19].replace("T", " ")


@image.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_images(ctx: Context, as_json: bool) -> None:
    """List the images in the store."""
    from sdrun.image.usage import usage

    images = _store(ctx).images()
    users = usage(ctx.paths).pods_by_image
    if as_json:
        listing = [
            {
                "names": list(image.names),
                "digest": image.digest,
                "size": image.size,
                "created": image.config.get("created"),
                "layers": len(image.manifest.layers),
                "pods": sorted(users.get(image.digest, [])),
            }
            for image in images
        ]
        click.echo(json.dumps(listing, indent=2))
        return
    rows = [("NAME", "DIGEST", "SIZE", "CREATED", "PODS")]
    for image in images:
        size = f"{image.size / 1e6:.1f} MB"
        pods = str(len(users.get(image.digest, [])))
        for name in image.names:
            rows.append((name, image.digest.removeprefix("sha256:")[:12], size, _created(image), pods))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@image.command()
@click.argument("name", metavar="IMAGE")
@pass_context
def inspect(ctx: Context, name: str) -> None:
    """Show an image's names, manifest, config, layers and the trees and pods that use it, as JSON."""
    from sdrun.image.usage import usage

    store = _store(ctx)
    found = store.get(name)
    layers = [
        {
            "digest": layer.digest,
            "mediaType": layer.media_type,
            "size": layer.size,
            "diff_id": diff_id,
            "tree": str(store.tree_root(diff_id)) if store.has_tree(diff_id) else None,
        }
        for layer, diff_id in zip(found.manifest.layers, found.diff_ids, strict=False)
    ]
    details = {
        "names": list(found.names),
        "digest": found.digest,
        "index_digest": found.index_digest,
        "mediaType": found.manifest.media_type,
        "size": found.size,
        "config": found.config,
        "layers": layers,
        "pods": sorted(usage(ctx.paths).pods_by_image.get(found.digest, [])),
    }
    click.echo(json.dumps(details, indent=2))


@image.command()
@click.option("-f", "--force", is_flag=True, help="Remove a used image's last name, or all names of a digest.")
@click.argument("names", metavar="IMAGE...", nargs=-1, required=True)
@pass_context
def rm(ctx: Context, force: bool, names: tuple[str, ...]) -> None:
    """Remove names (a digest: all of its names); an image left with none is deleted, but for the
    layers other images or pods use. An image a pod uses keeps its content until 'image gc'."""
    from sdrun.image.usage import usage

    store = _store(ctx)
    with store.exclusive():
        used = usage(ctx.paths)
        images: dict[str, Image] = {}
        dropped: dict[str, set[str]] = {}
        for text in names:
            found = store.get(text)
            name = store.name_of(text)
            if name is None and len(found.names) > 1 and not force:
                raise SdrunError(
                    f"image {found.digest[:19]} has {len(found.names)} names: {', '.join(found.names)}",
                    hint="remove them by name, or all at once with 'sdrun image rm -f'",
                )
            images[found.digest] = found
            dropped.setdefault(found.digest, set()).update([name] if name else found.names)
        for digest, found in images.items():
            pods = used.pods_by_image.get(digest, [])
            if pods and not force and dropped[digest] >= set(found.names):
                raise SdrunError(
                    f"image {found.names[0] if found.names else digest} is used by {len(pods)} pod(s): "
                    f"{', '.join(sorted(pods)[:5])}",
                    hint="remove the pods first, or 'sdrun image rm -f'",
                )
        for digest, found in images.items():
            for name in sorted(dropped[digest]):
                store.untag(name)
                click.echo(f"untagged {name}")
            if dropped[digest] >= set(found.names):
                for removed in store.delete_content(found, set(used.pods_by_image), used.trees):
                    click.echo(f"removed {removed}")


@image.command()
@pass_context
def gc(ctx: Context) -> None:
    """Delete blobs and layer trees no image and no pod uses, and what interrupted pulls left."""
    from sdrun.image.usage import usage

    store = _store(ctx)
    with store.exclusive():
        used = usage(ctx.paths)
        for removed in store.collect_garbage(set(used.pods_by_image), used.trees):
            click.echo(f"removed {removed}")


@image.command()
@click.argument("name", metavar="IMAGE")
@click.argument("target", metavar="[oci-archive:|docker-archive:]FILE")
@pass_context
def export(ctx: Context, name: str, target: str) -> None:
    """Write an image to an OCI archive (FILE), or a docker archive (docker save's), for skopeo, podman and sdrun."""
    from sdrun.image.archive import export_image

    store = _store(ctx)
    with store.shared():
        written = export_image(store, store.get(name), target)
    click.echo(str(written))


@image.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def which(ctx: Context, path: str, as_json: bool) -> None:
    """Which images (and their pods) ship PATH (absolute) or a file named PATH, from which layer; 1 if none."""
    from sdrun.image.usage import usage
    from sdrun.image.which import find_in_images

    store = _store(ctx)
    users = usage(ctx.paths).pods_by_image
    matches = find_in_images(store, store.images(), path)
    if as_json:
        rows: list[dict[str, Any]] = [
            match.to_json() | {"pods": sorted(users.get(match.image.digest, []))} for match in matches
        ]
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_matches(matches, users)
    if not matches:
        sys.exit(1)  # as grep: nothing found


def _print_matches(matches: list[Match], users: dict[str, list[str]]) -> None:
    for match in matches:
        pods = users.get(match.image.digest, [])
        in_pods = f"  pods: {', '.join(sorted(pods))}" if pods else ""
        at = f" (at {match.resolved})" if match.resolved != match.path else ""
        click.echo(f"{match.image_name}  {match.path}{at}  layer {match.layer_digest[:19]}{in_pods}")


@image.command()
@click.option("-u", "--username", prompt=True, help="User name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@tls_option
@click.argument("host")
@pass_context
def login(ctx: Context, username: str, password_stdin: bool, tls_verify: bool | None, host: str) -> None:
    """Check credentials with a registry and store them in <root>/auth.json (mode 0600)."""
    from sdrun.image.auth import save_credentials
    from sdrun.image.registry import check_login

    password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True)
    check_login(host, (username, password), tls_verify=tls_verify)
    save_credentials(ctx.paths.auth_file, host, username, password)
    click.echo(f"logged in to {host}")


@image.command()
@click.argument("host")
@pass_context
def logout(ctx: Context, host: str) -> None:
    """Forget the credentials stored for a registry."""
    from sdrun.image.auth import save_credentials

    save_credentials(ctx.paths.auth_file, host, "", None)
    click.echo(f"logged out of {host}")


# --- the signature policy ---


@image.group()
def trust() -> None:
    """The signature policy (containers-policy.json, which podman and skopeo read too): show and edit it."""


transport_option = click.option(
    "--transport", default="docker", show_default=True, help="The policy's transport the scope belongs to."
)


@trust.command(name="show")
@signature_policy_option
@click.option("--json", "as_json", is_flag=True, help="Print the file's JSON.")
@pass_context
def trust_show(ctx: Context, signature_policy: Path | None, as_json: bool) -> None:
    """Show the effective policy: each scope and what it requires (all of it must hold)."""
    from sdrun.image.trustedit import describe_policy
    from sdrun.image.trustpolicy import DEFAULT_POLICY, load_trust_policy

    path = signature_policy or DEFAULT_POLICY
    policy = load_trust_policy(signature_policy) if path.exists() else None
    if as_json:
        click.echo(path.read_text().rstrip("\n") if policy is not None else "{}")
        return
    if policy is not None:
        click.echo(str(path))
    for line in describe_policy(policy, path):
        click.echo(line)


@trust.command(name="add")
@signature_policy_option
@transport_option
@click.option(
    "--type", "kind", type=click.Choice(["gpg", "sigstore"]), default="gpg", show_default=True, help="The key's kind."
)
@click.option("-y", "--yes", is_flag=True, help="Trust the key without asking.")
@click.argument("key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("scope")
@pass_context
def trust_add(
    ctx: Context, signature_policy: Path | None, transport: str, kind: str, yes: bool, key: Path, scope: str
) -> None:
    """Trust KEY (a GPG public key, or a cosign public key in PEM) for SCOPE (HOST[:PORT][/REPO...], or
    'default'): images there must then be signed by it. Shows the fingerprint and asks first."""
    from sdrun.image.trustedit import SIGSTORE, add_key, install_key, read_key, sigstore_fingerprint_note

    found = read_key(key, kind)
    for fingerprint in found.fingerprints:
        click.echo(f"{'GPG key' if kind == 'gpg' else 'cosign key sha256'} {fingerprint}")
    if not yes and not click.confirm(f"Trust {'this key' if len(found.fingerprints) == 1 else 'these keys'} "
                                     f"for {scope}?", default=False, err=True):  # fmt: skip
        raise SdrunError("not trusted: nothing changed")
    installed = install_key(ctx.paths, found)
    click.echo(add_key(signature_policy, transport, scope, installed, kind))
    if kind == SIGSTORE:
        click.echo(f"note: {sigstore_fingerprint_note()}")


@trust.command(name="set")
@signature_policy_option
@transport_option
@click.argument("scope")
@click.argument("verdict", type=click.Choice(["accept", "reject"]))
@pass_context
def trust_set(ctx: Context, signature_policy: Path | None, transport: str, scope: str, verdict: str) -> None:
    """Make SCOPE (or 'default') accept anything, or reject every image."""
    from sdrun.image.trustedit import set_scope

    click.echo(set_scope(signature_policy, transport, scope, verdict))


@trust.command(name="rm")
@signature_policy_option
@transport_option
@click.argument("scope")
@pass_context
def trust_rm(ctx: Context, signature_policy: Path | None, transport: str, scope: str) -> None:
    """Remove SCOPE from the policy: its images fall under a wider scope, or the default."""
    from sdrun.image.trustedit import remove_scope

    click.echo(remove_scope(signature_policy, transport, scope))
