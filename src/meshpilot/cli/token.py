"""`meshpilot token create`: a bootstrap token for one workload identity.

    meshpilot token create --ca-dir DIR --namespace NS --service-account SA [--ttl 3600] [-o FILE]

The token (security/tokens.py) lets `meshpilot proxy … --token-file FILE` obtain its first
certificate from `meshpilot discovery --ca-dir DIR`; it is signed with that directory's token key
and holds no secret of its own, but whoever has it can get a certificate for the identity until
it expires: keep it like a password, and short-lived.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from meshpilot.model.security import Identity
from meshpilot.security.identity import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN
from meshpilot.security.tokens import DEFAULT_TOKEN_TTL, create_token, load_or_create_key

token_app = typer.Typer(help="Bootstrap tokens for workload certificates.", no_args_is_help=True)


@token_app.command("create")
def create(
    ca_dir: Annotated[Path, typer.Option("--ca-dir", help="The discovery server's --ca-dir.",
                                         file_okay=False)],
    namespace: Annotated[str, typer.Option("--namespace")],
    service_account: Annotated[str, typer.Option("--service-account")] = DEFAULT_SERVICE_ACCOUNT,
    trust_domain: Annotated[str, typer.Option("--trust-domain")] = DEFAULT_TRUST_DOMAIN,
    ttl: Annotated[float, typer.Option("--ttl", min=1, help="Seconds the token is valid.")]
    = DEFAULT_TOKEN_TTL,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write here (mode 0600), not stdout.")]
    = None,
) -> None:
    """Create a token proving spiffe://<trust domain>/ns/<namespace>/sa/<service account>."""
    token = create_token(load_or_create_key(ca_dir),
                         Identity(trust_domain, namespace, service_account), ttl)
    if output is None:
        typer.echo(token)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
