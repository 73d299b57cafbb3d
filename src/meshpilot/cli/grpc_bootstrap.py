"""`meshpilot grpc-bootstrap`: write the bootstrap a proxyless gRPC client reads.

The identity options are those of `meshpilot bootstrap` (an Envoy's), minus the Envoy-only
ones, plus `--locality`. Point the application at the file with `GRPC_XDS_BOOTSTRAP` and give
its channels `xds:///<host>:<port>` targets:

    meshpilot grpc-bootstrap --namespace default --workload-name client -o grpc-bootstrap.json
    GRPC_XDS_BOOTSTRAP=grpc-bootstrap.json python app.py

Mistakes in the options are one line on stderr and exit code 2, as for the other commands.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from meshpilot.agent.grpc_bootstrap import build_grpc_bootstrap, render_grpc_bootstrap
from meshpilot.agent.node import HostPort, parse_host_port
from meshpilot.cli.proxy import (
    DEFAULT_DISCOVERY_ADDRESS,
    USAGE_ERROR,
    ClusterIdOption,
    DiscoveryAddressOption,
    IdentityArgs,
    IpOption,
    LabelsOption,
    NamespaceOption,
    NetworkOption,
    NodeIdOption,
    WorkloadNameOption,
)
from meshpilot.model import Locality, NodeType


def grpc_bootstrap_command(
    discovery_address: DiscoveryAddressOption = DEFAULT_DISCOVERY_ADDRESS,
    node_id: NodeIdOption = None,
    namespace: NamespaceOption = None,
    workload_name: WorkloadNameOption = None,
    labels: LabelsOption = "",
    ip: IpOption = None,
    network: NetworkOption = "",
    cluster_id: ClusterIdOption = "",
    locality: Annotated[
        str,
        typer.Option(
            "--locality",
            metavar="REGION/ZONE/SUBZONE",
            help="Where the client runs, as Istio writes localities.",
        ),
    ] = "",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
) -> None:
    """Print the gRPC xDS bootstrap (JSON) for a proxyless gRPC client (GRPC_XDS_BOOTSTRAP)."""
    identity = IdentityArgs(
        node_id=node_id,
        namespace=namespace,
        workload_name=workload_name,
        labels=labels,
        ips=tuple(ip or ()),
        network=network,
        cluster_id=cluster_id,
    )
    try:
        node = identity.node_info(NodeType.SIDECAR, socket.gethostname())
        discovery = _discovery_address(discovery_address)
        where = Locality.parse(locality.strip("/"))
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(USAGE_ERROR) from None
    text = render_grpc_bootstrap(build_grpc_bootstrap(node, discovery, where))
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as err:
        typer.echo(f"error: cannot write {output}: {err}", err=True)
        raise typer.Exit(1) from None


def _discovery_address(value: str) -> HostPort:
    try:
        return parse_host_port(value)
    except ValueError as err:
        raise ValueError(f"--discovery-address: {err}") from None


def register(app: typer.Typer) -> None:
    app.command("grpc-bootstrap")(grpc_bootstrap_command)
