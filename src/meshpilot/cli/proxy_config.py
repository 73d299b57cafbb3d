"""`meshpilot proxy-config` (`pc`): what one Envoy actually has, in istioctl's tables.

The proxy is named by node id (or `workload.namespace`); its admin address comes from the
metadata the agent registered, as the server reports it. `--admin HOST:PORT` reaches an Envoy
directly and `--file` reads a saved `/config_dump` (or `/clusters?format=json` for endpoints).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from meshpilot.diagnostics import proxyconfig, status, xdsclient
from meshpilot.diagnostics.admin import AdminError, EnvoyAdmin, parse_loggers
from meshpilot.diagnostics.configdump import EnvoyDump
from meshpilot.diagnostics.options import (
    DEFAULT_XDS_ADDRESS,
    OutputOption,
    TimeoutOption,
    XdsAddressOption,
    fail,
)
from meshpilot.diagnostics.output import Format, Report, render, write

group = typer.Typer(
    name="proxy-config",
    help="One Envoy's clusters, listeners, routes, endpoints, bootstrap, secrets, log levels.",
    no_args_is_help=True,
)

ProxyArgument = Annotated[
    str | None, typer.Argument(help="Node id or workload.namespace of the proxy.")
]
AdminOption = Annotated[
    str | None,
    typer.Option("--admin", metavar="HOST:PORT", help="Envoy admin address (no server needed)."),
]
FileOption = Annotated[
    Path | None, typer.Option("--file", "-f", help="A saved Envoy config dump JSON file.")
]
PortOption = Annotated[int, typer.Option("--port", help="Only this port.")]


@dataclass
class Source:
    """Where the config comes from: a live admin API or a saved file."""

    admin: EnvoyAdmin | None
    file: Path | None

    def dump(self, include_eds: bool = False) -> EnvoyDump:
        if self.file is not None:
            return EnvoyDump.load(self.file)
        assert self.admin is not None
        return EnvoyDump(self.admin.config_dump(include_eds))

    def clusters(self) -> dict[str, Any]:
        if self.file is not None:
            return EnvoyDump.load(self.file).data
        assert self.admin is not None
        return self.admin.clusters()


def _source(
    proxy: str | None, xds_address: str, admin: str | None, file: Path | None, timeout: float
) -> Source:
    if file is not None:
        return Source(None, file)
    if admin:
        return Source(EnvoyAdmin(admin, timeout), None)
    if not proxy:
        fail("name a proxy, or pass --admin HOST:PORT or --file DUMP.json", 2)
    try:
        report = xdsclient.sync_report(xds_address, timeout=timeout)
    except xdsclient.ServerError as error:
        fail(str(error))
    matches = status.select(report, proxy=proxy)
    if len(matches) != 1:
        known = ", ".join(c.node.id for c in matches) if matches else "none matches"
        fail(f"proxy {proxy!r} is not one connected proxy ({known})")
    address = str(status.metadata(matches[0]).get("ADMIN_ADDRESS", ""))
    if not address:
        fail(f"proxy {proxy!r} registered no admin address: pass --admin")
    return Source(EnvoyAdmin(address, timeout), None)


def _show(build: Any, output: Format) -> None:
    try:
        report = build()
    except (AdminError, ValueError) as error:
        fail(str(error))
    write(sys.stdout, report, output)


@group.command("cluster")
def cluster(
    proxy: ProxyArgument = None,
    fqdn: Annotated[str, typer.Option("--fqdn", help="Only clusters of this FQDN.")] = "",
    port: PortOption = 0,
    subset: Annotated[str, typer.Option("--subset", help="Only this subset.")] = "",
    direction: Annotated[str, typer.Option("--direction", help="inbound or outbound.")] = "",
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Clusters: SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE."""
    source = _source(proxy, xds_address, admin, file, timeout)
    f = proxyconfig.ClusterFilter(fqdn, port, subset, direction)
    _show(lambda: proxyconfig.clusters_report(source.dump(), f), output)


@group.command("listener")
def listener(
    proxy: ProxyArgument = None,
    address: Annotated[str, typer.Option("--address", help="Only this address.")] = "",
    port: PortOption = 0,
    type_: Annotated[str, typer.Option("--type", help="HTTP, TCP or HTTP+TCP.")] = "",
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Listeners, one row per filter chain: ADDRESSES, PORT, MATCH, DESTINATION."""
    source = _source(proxy, xds_address, admin, file, timeout)
    f = proxyconfig.ListenerFilter(address, port, type_)
    _show(lambda: proxyconfig.listeners_report(source.dump(), f), output)


@group.command("route")
def route(
    proxy: ProxyArgument = None,
    name: Annotated[str, typer.Option("--name", help="Only this route configuration.")] = "",
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Routes, one row per route: NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE."""
    source = _source(proxy, xds_address, admin, file, timeout)
    _show(lambda: proxyconfig.routes_report(source.dump(), proxyconfig.RouteFilter(name)), output)


@group.command("endpoint")
def endpoint(
    proxy: ProxyArgument = None,
    address: Annotated[str, typer.Option("--address", help="Only this address.")] = "",
    port: PortOption = 0,
    cluster_name: Annotated[str, typer.Option("--cluster", help="Only this cluster.")] = "",
    status_: Annotated[str, typer.Option("--status", help="HEALTHY, UNHEALTHY, DRAINING, …")] = "",
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Endpoints: ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER (from /clusters or a dump with EDS)."""
    source = _source(proxy, xds_address, admin, file, timeout)
    f = proxyconfig.EndpointFilter(address, port, cluster_name, status_)
    _show(lambda: proxyconfig.endpoints_report(source.clusters(), f), output)


@group.command("bootstrap")
def bootstrap(
    proxy: ProxyArgument = None,
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.JSON,
    timeout: TimeoutOption = 10.0,
) -> None:
    """The bootstrap Envoy started with (JSON or YAML)."""
    source = _source(proxy, xds_address, admin, file, timeout)
    _show(lambda: Report(None, source.dump().bootstrap()), output)


@group.command("secret")
def secret(
    proxy: ProxyArgument = None,
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Secrets: RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER, NOT AFTER, NOT BEFORE."""
    source = _source(proxy, xds_address, admin, file, timeout)
    _show(lambda: proxyconfig.secrets_report(source.dump()), output)


@group.command("all")
def all_config(
    proxy: ProxyArgument = None,
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    file: FileOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Clusters, listeners, routes, endpoints and secrets; JSON/YAML print the whole dump."""
    source = _source(proxy, xds_address, admin, file, timeout)
    try:
        dump = source.dump(include_eds=True)
    except (AdminError, ValueError) as error:
        fail(str(error))
    if output is not Format.SHORT:
        write(sys.stdout, Report(None, dump.data), output)
        return
    reports = [
        proxyconfig.clusters_report(dump),
        proxyconfig.listeners_report(dump),
        proxyconfig.routes_report(dump),
        proxyconfig.endpoints_report(dump.data),
        proxyconfig.secrets_report(dump),
    ]
    typer.echo("\n".join(render(r, Format.SHORT) for r in reports), nl=False)


@group.command("log")
def log(
    proxy: ProxyArgument = None,
    level: Annotated[
        str,
        typer.Option(
            "--level", help="A level for every logger, or name:level,name2:level for some."
        ),
    ] = "",
    reset: Annotated[bool, typer.Option("--reset", help="Every logger back to warning.")] = False,
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    admin: AdminOption = None,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Show Envoy's log levels, or change them (--level, --reset)."""
    source = _source(proxy, xds_address, admin, None, timeout)
    assert source.admin is not None
    try:
        if reset:
            source.admin.set_log_level("warning")
        if level and ":" in level:
            pairs = (item.partition(":") for item in level.split(",") if item)
            source.admin.set_logger_levels({name: lvl for name, _, lvl in pairs})
        elif level:
            source.admin.set_log_level(level)
        loggers = parse_loggers(source.admin.logging())
    except AdminError as error:
        fail(str(error))
    if output is Format.SHORT:
        typer.echo("active loggers:")
        for name, lvl in loggers.items():
            typer.echo(f"  {name}: {lvl}")
        return
    write(sys.stdout, Report(None, loggers), output)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="proxy-config")
    app.add_typer(group, name="pc", hidden=True)
