"""`meshpilot describe proxy|service` (also `x describe`, and istioctl's `pod`/`svc` names)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from meshpilot.diagnostics import describe as explain
from meshpilot.diagnostics import xdsclient
from meshpilot.diagnostics.options import (
    DEFAULT_XDS_ADDRESS,
    OutputOption,
    TimeoutOption,
    XdsAddressOption,
    fail,
)
from meshpilot.diagnostics.output import Format, Report, write
from meshpilot.model.snapshot import Snapshot

group = typer.Typer(
    name="describe",
    help="Explain the config that reaches a proxy or service.",
    no_args_is_help=True,
)


def _snapshot(xds_address: str, timeout: float) -> Snapshot:
    registryz = xdsclient.topic(xds_address, "registryz", timeout)
    configz = xdsclient.topic(xds_address, "configz", timeout)
    return explain.snapshot_from(registryz, configz)


def _print(description: explain.Description, output: Format) -> None:
    if output is Format.SHORT:
        typer.echo(description.text(), nl=False)
    else:
        write(sys.stdout, Report(None, description.data), output)


@group.command("proxy")
def proxy(
    name: Annotated[str, typer.Argument(help="Node id or workload.namespace of the proxy.")],
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A proxy's services, DestinationRule subsets and the VirtualService routes reaching it."""
    try:
        clients = xdsclient.topic(xds_address, "adsz", timeout)["clients"]
        matches = {
            c["proxy"]: c
            for c in clients
            if name in (c["proxy"], f"{c['workload']}.{c['namespace']}")
        }
        if len(matches) != 1:
            fail(f"proxy {name!r} is not one connected proxy ({', '.join(matches) or 'none'})")
        snapshot = _snapshot(xds_address, timeout)
    except xdsclient.ServerError as error:
        fail(str(error))
    (client,) = matches.values()
    _print(explain.describe_proxy(snapshot, explain.proxy_from(client)), output)


@group.command("service")
def service(
    host: Annotated[str, typer.Argument(help="Service host: reviews, or its full name.")],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace a short name is in.")
    ] = "default",
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """A service's ports, endpoints, DestinationRule and VirtualService, with warnings."""
    try:
        snapshot = _snapshot(xds_address, timeout)
        description = explain.describe_service(snapshot, host, namespace)
    except (xdsclient.ServerError, LookupError) as error:
        fail(str(error).strip("'\""))
    _print(description, output)


group.command("pod", hidden=True)(proxy)
group.command("svc", hidden=True)(service)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="describe")
    experimental = typer.Typer(name="x", help="istioctl's experimental names.", hidden=True)
    experimental.add_typer(group, name="describe")
    app.add_typer(experimental, name="x", hidden=True)
