"""`meshpilot admin log`: list and set the discovery server's logging scopes over ControlZ."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from meshpilot.diagnostics.controlz import (
    DEFAULT_CONTROLZ_ADDRESS,
    DEFAULT_LEVEL,
    ControlzClient,
    ControlzError,
    parse_levels,
    scopes_report,
)
from meshpilot.diagnostics.options import OutputOption, TimeoutOption, fail
from meshpilot.diagnostics.output import Format, write

group = typer.Typer(name="admin", help="Manage the discovery server itself.", no_args_is_help=True)

ControlzAddressOption = Annotated[
    str, typer.Option("--controlz-address", metavar="HOST:PORT", help="The server's ControlZ.")
]


@group.command("log")
def log(
    level: Annotated[
        str,
        typer.Option("--level", help="A level for every scope, or scope:level,scope2:level."),
    ] = "",
    reset: Annotated[
        bool, typer.Option("--reset", help=f"Every scope back to {DEFAULT_LEVEL}.")
    ] = False,
    controlz_address: ControlzAddressOption = DEFAULT_CONTROLZ_ADDRESS,
    output: OutputOption = Format.SHORT,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List logging scopes and their levels (none, error, warn, info, debug), or change them."""
    client = ControlzClient(controlz_address, timeout)
    try:
        names = [s["name"] for s in client.scopes()]
        changes = {name: DEFAULT_LEVEL for name in names} if reset else {}
        if level:
            changes.update(parse_levels(level, names))
        for scope, new_level in changes.items():
            client.set_level(scope, new_level)
        scopes = client.scopes()
    except ControlzError as error:
        fail(str(error))
    write(sys.stdout, scopes_report(scopes), output)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="admin")
