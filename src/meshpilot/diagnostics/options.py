"""Command-line options shared by the diagnostic commands, spelled as istioctl spells them.

Also the one way those commands report a failure: `fail` prints `error: …` on stderr and exits
1, never a traceback.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from meshpilot.diagnostics.output import Format
from meshpilot.diagnostics.xdsclient import DEFAULT_XDS_ADDRESS

XdsAddressOption = Annotated[
    str,
    typer.Option(
        "--xds-address",
        metavar="HOST:PORT",
        help="The discovery server's xDS address (as istioctl's --xds-address).",
    ),
]
OutputOption = Annotated[
    Format, typer.Option("--output", "-o", help="Output format: short, json or yaml.")
]
NamespaceOption = Annotated[
    str, typer.Option("--namespace", "-n", help="Only proxies in this namespace.")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the server or Envoy to answer.")
]

__all__ = [
    "DEFAULT_XDS_ADDRESS",
    "NamespaceOption",
    "OutputOption",
    "TimeoutOption",
    "XdsAddressOption",
    "fail",
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
