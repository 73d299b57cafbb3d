"""`meshpilot dashboard controlz`: open the server's ControlZ pages in a browser.

The server must answer first (so a wrong address fails here, not in the browser). Where no
browser can be started (a server, an SSH session) the URL is printed to open elsewhere.
"""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from meshpilot.diagnostics.controlz import DEFAULT_CONTROLZ_ADDRESS, ControlzClient, ControlzError
from meshpilot.diagnostics.options import TimeoutOption, fail

group = typer.Typer(name="dashboard", help="Open a dashboard in a browser.", no_args_is_help=True)


@group.command("controlz")
def controlz(
    address: Annotated[
        str, typer.Option("--address", metavar="HOST:PORT", help="The server's ControlZ.")
    ] = DEFAULT_CONTROLZ_ADDRESS,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open a browser when there is one.")
    ] = True,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Open ControlZ (log scopes, memory, process, metrics) of the discovery server."""
    client = ControlzClient(address, timeout)
    try:
        client.version()
    except ControlzError as error:
        fail(str(error))
    typer.echo(client.url)
    if browser and not _open(client.url):
        typer.echo("no browser found here: open the URL above", err=True)


def _open(url: str) -> bool:
    try:
        return webbrowser.get().open(url)
    except webbrowser.Error:
        return False


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="dashboard")
