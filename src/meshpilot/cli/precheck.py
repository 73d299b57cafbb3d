"""`meshpilot precheck` and `meshpilot verify-install`: ✔/✘ checklists, non-zero on a ✘."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshpilot.diagnostics import checks
from meshpilot.diagnostics.options import (
    DEFAULT_XDS_ADDRESS,
    TimeoutOption,
    XdsAddressOption,
)


def precheck(
    config_dir: Annotated[
        list[Path], typer.Option("--config-dir", help="Config directory to check (repeatable).")
    ],
    xds_address: Annotated[
        str, typer.Option(help="Where the xDS server will listen.")
    ] = DEFAULT_XDS_ADDRESS,
    debug_address: Annotated[
        str, typer.Option(help="Where debug HTTP will listen.")
    ] = "127.0.0.1:15014",
    controlz_address: Annotated[
        str, typer.Option(help="Where ControlZ will listen.")
    ] = "127.0.0.1:9876",
) -> None:
    """Before starting: Envoy found, ports free, config readable and valid, registries reached."""
    results = checks.precheck(
        config_dir,
        {"xDS": xds_address, "debug HTTP": debug_address, "ControlZ": controlz_address},
    )
    _finish(results)


def verify_install(
    xds_address: XdsAddressOption = DEFAULT_XDS_ADDRESS,
    min_proxies: Annotated[
        int, typer.Option("--min-proxies", help="Fail unless at least this many are connected.")
    ] = 1,
    timeout: TimeoutOption = 10.0,
) -> None:
    """After starting: server ready, no config errors, proxies connected and SYNCED."""
    _finish(checks.verify_install(xds_address, timeout, min_proxies))


def _finish(results: list[checks.Check]) -> None:
    typer.echo(checks.render(results), nl=False)
    if not all(c.ok for c in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("precheck")(precheck)
    app.command("verify-install")(verify_install)
