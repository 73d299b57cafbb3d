"""`meshpilot ca`: certificate authorities for one mesh served by several control planes.

    meshpilot ca root ./mesh-root --trust-domain cluster.local
    meshpilot ca intermediate ./mesh-root ./cluster-1-ca --name cluster-1
    meshpilot discovery --ca-dir ./cluster-1-ca …

Each control plane signs with its own intermediate; all chain to the one root, so workloads
served by different control planes accept each other in mTLS.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from meshpilot.security.ca import CaError, CertificateAuthority, create_intermediate

ca_app = typer.Typer(help="Create mesh certificate authorities (a root and intermediates).",
                     no_args_is_help=True)


@ca_app.command("root")
def root(
    directory: Annotated[Path, typer.Argument(help="Directory for the root (created).")],
    trust_domain: Annotated[str, typer.Option("--trust-domain")] = "cluster.local",
) -> None:
    """Create a self-signed root in DIRECTORY, or show the one already there."""
    try:
        authority = CertificateAuthority.load_or_create(directory, trust_domain)
    except CaError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"root CA {authority.certificate.subject.rfc4514_string()} in {directory}")


@ca_app.command("intermediate")
def intermediate(
    root_dir: Annotated[Path, typer.Argument(help="The root's directory.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the intermediate: a --ca-dir.")],
    name: Annotated[str, typer.Option("--name", help="Names the intermediate, e.g. the "
                                      "cluster of the control plane using it.")],
    days: Annotated[int, typer.Option("--days", min=1)] = 365,
) -> None:
    """Create an intermediate CA signed by the root, laid out as Istio's `cacerts`."""
    try:
        authority = create_intermediate(root_dir, out_dir, name, datetime.timedelta(days=days))
    except CaError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"intermediate CA {authority.certificate.subject.rfc4514_string()} in {out_dir}"
               f" (until {authority.certificate.not_valid_after_utc:%Y-%m-%d})")


def register(app: typer.Typer) -> None:
    app.add_typer(ca_app, name="ca")
