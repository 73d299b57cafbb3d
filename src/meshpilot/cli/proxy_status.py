"""`meshpilot proxy-status` (`ps`): did the config reach the proxies, and does one match?

Without a proxy: one row per connected proxy with each xDS type's status and its age, read
from the server over xDS. With a proxy: the server's config for it now against Envoy's own
`/config_dump` (reached at the admin address the agent registered, or `--file`), per kind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from envoy.service.status.v3 import csds_pb2

from meshpilot.diagnostics import compare, status, xdsclient
from meshpilot.diagnostics.admin import AdminError, EnvoyAdmin
from meshpilot.diagnostics.configdump import EnvoyDump
from meshpilot.diagnostics.options import (
    DEFAULT_XDS_ADDRESS,
    NamespaceOption,
    OutputOption,
    TimeoutOption,
    XdsAddressOption,
    fail,
)
from meshpilot.diagnostics.output import Format, Report, write


def proxy_status(
    proxy: Annotated[
        str | None,
        typer.Argument(help="Compare this proxy (node id or workload.namespace) with Envoy."),
    ] = None,
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    namespace: NamespaceOption = "",
    output: OutputOption = Format.SHORT,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Envoy config dump JSON file to compare instead."),
    ] = None,
    admin: Annotated[
        str | None,
        typer.Option("--admin", metavar="HOST:PORT", help="Envoy admin address to compare."),
    ] = None,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Sync status of every proxy (SYNCED, STALE, NOT SENT, ERROR), or one proxy's config diff."""
    try:
        report = xdsclient.sync_report(xds_address, timeout=timeout)
    except xdsclient.ServerError as error:
        fail(str(error))
    if proxy is None:
        configs = status.select(report, namespace)
        write(sys.stdout, status.status_report(report, configs), output)
        rejected = status.errors(configs)
        if output is Format.SHORT and rejected:
            typer.echo("\nRejected by Envoy:\n" + "\n".join(f"  {line}" for line in rejected))
        return
    matches = status.select(report, namespace, proxy)
    if not matches:
        fail(f"proxy {proxy!r} is not connected to {xds_address}")
    if len(matches) > 1:
        fail(f"{proxy!r} names several proxies: {', '.join(c.node.id for c in matches)}")
    (config,) = matches
    try:
        server = EnvoyDump(
            xdsclient.topic(xds_address, f"config_dump?proxyID={config.node.id}", timeout)
        )
        envoy = _envoy_dump(config, file, admin, timeout)
    except (xdsclient.ServerError, AdminError, ValueError) as error:
        fail(str(error))
    results = compare.compare(server, envoy)
    if output is Format.SHORT:
        typer.echo(compare.render(results), nl=False)
    else:
        write(sys.stdout, Report(None, compare.as_data(results)), output)


def _envoy_dump(
    config: csds_pb2.ClientConfig, file: Path | None, admin: str | None, timeout: float
) -> EnvoyDump:
    if file is not None:
        return EnvoyDump.load(file)
    address = admin or str(status.metadata(config).get("ADMIN_ADDRESS", ""))
    if not address:
        raise ValueError("the proxy registered no admin address: pass --admin or --file")
    return EnvoyDump(EnvoyAdmin(address, timeout).config_dump())


def register(app: typer.Typer) -> None:
    app.command("proxy-status")(proxy_status)
    app.command("ps", hidden=True)(proxy_status)
