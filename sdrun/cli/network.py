"""`sdrun network create|list|rm`: user-defined bridge networks, on which pods reach each other by name."""

from __future__ import annotations

import json

import click

from sdrun.cli.commands import Context, main, pass_context
from sdrun.errors import SdrunError
from sdrun.net import DEFAULT


@main.group()
def network() -> None:
    """Manage bridge networks (--net NAME)."""


@network.command()
@click.argument("name")
@click.option("--subnet", required=True, metavar="CIDR", help="The network's IPv4 subnet, e.g. 10.89.0.0/24.")
@click.option("--ipv6", is_flag=True, help="Give pods IPv6 too: a ULA /64 of the network's own, unless --subnet6.")
@click.option(
    "--subnet6", default="", metavar="CIDR", help="The network's IPv6 subnet (implies --ipv6), e.g. fd00:89::/64."
)
@pass_context
def create(ctx: Context, name: str, subnet: str, ipv6: bool, subnet6: str) -> None:
    """Create a network: a bridge and a subnet (and an IPv6 one), set up when its first pod starts."""
    from sdrun.net import config, ipam
    from sdrun.spec import parse_network

    with ipam.locked(ctx.paths.root):
        created = config.create(ctx.paths.root, parse_network(name), subnet, ipv6, subnet6)
    click.echo(created.name)


@network.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def list_networks(ctx: Context, as_json: bool) -> None:
    """List networks, their subnets, bridges and how many pods use each."""
    from sdrun.net import config, ipam

    root = ctx.paths.root
    with ipam.locked(root):
        config.load(root, DEFAULT)  # listed from the start, with the subnet it will have
        rows = [(item, len(ipam.leases(root, item.name))) for item in config.networks(root)]
    if as_json:
        entries = [
            {"name": item.name, "subnet": item.subnet, "subnet6": item.subnet6, "bridge": item.bridge, "pods": pods}
            for item, pods in rows
        ]
        click.echo(json.dumps(entries, indent=2))
        return
    table = [("NAME", "SUBNET", "GATEWAY", "BRIDGE", "PODS", "SUBNET6")]
    table += [(item.name, item.subnet, item.gateway, item.bridge, str(pods), item.subnet6) for item, pods in rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@network.command()
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@pass_context
def rm(ctx: Context, names: tuple[str, ...]) -> None:
    """Remove networks that no pod uses."""
    import shutil

    from sdrun.net import config, ipam, network_dir
    from sdrun.net.pod import retire

    root = ctx.paths.root
    with ipam.locked(root):
        for name in names:
            if name == DEFAULT:
                raise SdrunError("the default network cannot be removed")
            config.load(root, name)  # NotFound for an unknown name
            if users := ipam.leases(root, name):
                pods = ", ".join(lease.name for lease in users)
                raise SdrunError(f"network '{name}' is in use by {pods}", hint="remove those pods first")
            retire(root, name)  # its bridge and nftables elements, if a pod has used it since the last gc
            shutil.rmtree(network_dir(root, name))
            click.echo(name)
