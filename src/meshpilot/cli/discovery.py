"""`meshpilot discovery`: run the discovery server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from meshpilot.app import serve
from meshpilot.cli.console import (
    DEFAULT_CONSOLE_ADDRESS,
    DEFAULT_SESSION_TTL,
    ConsoleAddressOption,
    ConsoleCredentialsOption,
    DashboardOption,
    SessionTtlOption,
    StateDirOption,
    StatsIntervalOption,
    console_settings,
)
from meshpilot.etcd.client import EtcdAddress
from meshpilot.registry.urls import RegistryUrlError
from meshpilot.settings import DiscoverySettings
from meshpilot.xds.discovery import DebounceSettings


def _check_source(value: str) -> str:
    if value.startswith("kube://"):
        return value
    if value.startswith("etcd://"):
        return _check_etcd(value, "--config-source")
    if not value.startswith("xds://"):
        raise typer.BadParameter(f"expected xds://HOST:PORT, kube://?kubeconfig=PATH or "
                                 f"etcd://HOST:PORT?prefix=P, got {value!r}",
                                 param_hint="--config-source")
    _check_address(value.removeprefix("xds://"))
    return value


def _check_lease(value: str, ca_dir: Path | None = None) -> str:
    if "signingRotation=" in value and ca_dir is None:
        raise typer.BadParameter("signingRotation= needs --ca-dir (a root CA)",
                                 param_hint="--replicas-lease")
    if value.startswith("etcd://"):
        return _check_etcd(value, "--replicas-lease")
    if value and not value.startswith("kube://"):
        raise typer.BadParameter(f"expected kube://?namespace=NS&name=LEASE or "
                                 f"etcd://HOST:PORT?key=KEY, got {value!r}",
                                 param_hint="--replicas-lease")
    return value


def _check_etcd(value: str, hint: str) -> str:
    try:
        EtcdAddress.parse(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None
    return value


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}")
    return value


def discovery(
    config_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--config-dir",
            help="Directory of Istio YAML/JSON to watch (repeatable).",
            exists=True,
            file_okay=False,
            readable=True,
        ),
    ] = None,
    xds_address: Annotated[
        str, typer.Option(help="Where the xDS gRPC server listens.", callback=_check_address)
    ] = "127.0.0.1:15010",
    debug_address: Annotated[
        str, typer.Option(help="Where debug HTTP endpoints listen.", callback=_check_address)
    ] = "127.0.0.1:15014",
    controlz_address: Annotated[
        str, typer.Option(help="Where ControlZ pages listen.", callback=_check_address)
    ] = "127.0.0.1:9876",
    debounce_after: Annotated[
        float, typer.Option(help="Push once no change arrived for this many seconds.")
    ] = 0.1,
    debounce_max: Annotated[
        float, typer.Option(help="Push at the latest this many seconds after a first change.")
    ] = 10.0,
    secrets_dir: Annotated[
        Path | None,
        typer.Option(
            "--secrets-dir",
            help="Directory of Gateway TLS credentials: DIR/<credentialName>/{tls.crt,tls.key,"
            "ca.crt} or DIR/<namespace>/<credentialName>/….",
            exists=True,
            file_okay=False,
            readable=True,
        ),
    ] = None,
    mesh_config: Annotated[
        Path | None,
        typer.Option("--mesh-config", help="Istio MeshConfig YAML: extensionProviders, "
                     "defaultProviders, defaultConfig.tracing, accessLogFile, "
                     "outboundTrafficPolicy, trustDomain…", exists=True, dir_okay=False),
    ] = None,
    ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--ca-dir",
            help="Run the mesh CA from DIR: ca-cert.pem/ca-key.pem (plug-in, with optional "
            "root-cert.pem, cert-chain.pem), else a self-signed root created there. Enables "
            "workload certificates over SDS and mTLS.",
            file_okay=False,
        ),
    ] = None,
    secure_xds_address: Annotated[
        str, typer.Option(help="With --ca-dir: xDS over mutual TLS (client certificates from "
                          "the mesh CA; a proxy gets config for its certificate's identity "
                          "only) on HOST:PORT; '' for none.")
    ] = "127.0.0.1:15012",
    ca_address: Annotated[
        str, typer.Option(help="With --ca-dir: certificate requests proven by a bootstrap "
                          "token (meshpilot token create), over TLS, on HOST:PORT; '' for none.")
    ] = "127.0.0.1:15013",
    trust_domain: Annotated[
        str, typer.Option(help="SPIFFE trust domain (default: MeshConfig trustDomain, "
                          "cluster.local).")
    ] = "",
    cert_ttl: Annotated[
        float, typer.Option(help="Workload certificate lifetime in seconds (rotated at half).")
    ] = 24 * 3600.0,
    mesh_networks: Annotated[
        Path | None,
        typer.Option("--mesh-networks", help="Istio meshNetworks YAML: networks with "
                     "endpoints (fromRegistry, fromCidr) and gateways (address or "
                     "registryServiceName, port).", exists=True, dir_okay=False),
    ] = None,
    config_source: Annotated[
        list[str] | None,
        typer.Option(
            "--config-source",
            metavar="xds://HOST:PORT|kube://?kubeconfig=PATH|etcd://HOST:PORT?prefix=P",
            help="A config source beside the directories (repeatable): an MCP-over-xDS server "
            "(e.g. `meshpilot registry-sync --to mcp:…`), a Kubernetes API server whose "
            "Istio custom resources are read, validated and watched (`kube://` alone in a pod), "
            "or etcd: one document per key <prefix>/<Kind>/<namespace>/<name>.",
        ),
    ] = None,
    replicas_lease: Annotated[
        str,
        typer.Option(
            "--replicas-lease",
            metavar="kube://?namespace=NS&name=LEASE|etcd://HOST:PORT?key=KEY",
            help="Run as one of several replicas: leader election with this Kubernetes Lease, "
            "or an etcd key under a lease (also identity=, leaseDuration=15, renewDeadline=10, "
            "retryPeriod=2; kubeconfig= for kube); "
            "every replica serves xDS, only the leader writes status. With --ca-dir, "
            "signingRotation=SECONDS: the leader publishes a new signing intermediate every "
            "period (etcd: at signingKey=; kube: in the Secret signingSecret=) and all sign "
            "with it.",
        ),
    ] = "",
    write_status: Annotated[
        bool,
        typer.Option(
            "--write-status/--no-write-status",
            help="Write validation and analysis results into the status of the Istio objects "
            "of kube:// config sources (by the leader only).",
        ),
    ] = True,
    registry: Annotated[
        list[str] | None,
        typer.Option(
            "--registry",
            metavar="URL",
            help="A service registry to read (repeatable): consul://HOST:PORT, eureka://…, "
            "nacos://…?namespace=…&group=…, zookeeper://…/dubbo, etcd://…?prefix=…&layout=….",
        ),
    ] = None,
    analysis: Annotated[
        bool,
        typer.Option(
            "--analysis/--no-analysis",
            help="Analyze the config on every change, as istioctl analyze does; messages on "
            "/debug/analyze and the meshpilot_analysis_messages metric.",
        ),
    ] = True,
    rest_address: Annotated[
        str,
        typer.Option(
            help="Also serve REST-JSON xDS (POST /v3/discovery:clusters, :listeners, :routes, "
            ":endpoints; Envoy's api_type REST) on HOST:PORT.",
        ),
    ] = "",
    rest_xds_cluster: Annotated[
        str,
        typer.Option(help="The xDS cluster name in REST clients' bootstraps (their EDS and "
                     "RDS config sources are pointed at it)."),
    ] = "xds-grpc",
    workers: Annotated[
        int,
        typer.Option(min=1, help="Processes serving xDS on the one port (SO_REUSEPORT); debug "
                     "HTTP aggregates their proxies."),
    ] = 1,
    console_address: ConsoleAddressOption = DEFAULT_CONSOLE_ADDRESS,
    console_credentials: ConsoleCredentialsOption = None,
    console_session_ttl: SessionTtlOption = DEFAULT_SESSION_TTL,
    console_stats_interval: StatsIntervalOption = 5.0,
    dashboard: DashboardOption = None,
    state_dir: StateDirOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the discovery server: watch config, serve xDS to Envoy and gRPC clients."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    settings = DiscoverySettings(
        config_dirs=tuple(config_dir or ()),
        xds_address=xds_address,
        debug_address=debug_address,
        controlz_address=controlz_address,
        debounce=DebounceSettings(quiet=debounce_after, max_delay=debounce_max),
        secrets_dir=secrets_dir,
        registries=tuple(registry or ()),
        mesh_config=mesh_config,
        mesh_networks=mesh_networks,
        ca_dir=ca_dir,
        trust_domain=trust_domain,
        cert_ttl=cert_ttl,
        secure_xds_address=_check_address(secure_xds_address) if secure_xds_address else "",
        ca_address=_check_address(ca_address) if ca_address else "",
        config_sources=tuple(_check_source(s) for s in config_source or ()),
        replicas_lease=_check_lease(replicas_lease, ca_dir),
        write_status=write_status,
        analysis=analysis,
        rest_address=_check_address(rest_address) if rest_address else "",
        rest_xds_cluster=rest_xds_cluster,
        workers=workers,
        console=console_settings(console_address, console_credentials, console_session_ttl,
                                 state_dir, console_stats_interval, dashboard),
    )
    try:
        asyncio.run(serve(settings))
    except RegistryUrlError as error:
        typer.echo(f"error: --registry {error}", err=True)
        raise typer.Exit(2) from error
    except ValueError as error:  # e.g. an unreadable --mesh-config
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error


def register(app: typer.Typer) -> None:
    app.command("discovery")(discovery)
