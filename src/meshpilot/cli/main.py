"""The `meshpilot` command: a root Typer app that each command module registers itself on.

To add a command group, write `cli/<group>.py` with a `register(app)` function and call it below.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meshpilot import __version__
from meshpilot.cli import (
    admin,
    analyze,
    ca,
    config_etcd,
    console,
    dashboard,
    describe,
    discovery,
    grpc_bootstrap,
    install,
    precheck,
    proxy,
    proxy_config,
    proxy_status,
    registry_sync,
    token,
)

app = typer.Typer(
    name="meshpilot",
    help="A service-mesh control plane that drives Envoy over xDS.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"meshpilot {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A service-mesh control plane that drives Envoy over xDS."""


analyze.register(app)
discovery.register(app)
proxy.register(app)
token.register(app)
proxy_status.register(app)
proxy_config.register(app)
precheck.register(app)
describe.register(app)
dashboard.register(app)
console.register(app)
admin.register(app)
grpc_bootstrap.register(app)
registry_sync.register(app)
ca.register(app)
install.register(app)
config_etcd.register(app)

if __name__ == "__main__":
    app()
