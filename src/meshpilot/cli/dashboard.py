"""`meshpilot dashboard controlz|console|prometheus|grafana|zipkin`: open a dashboard.

`controlz` and `console` are served by the discovery server, which must answer first (so a
wrong address fails here, not in the browser). Prometheus, Grafana and Zipkin run elsewhere:
their URL comes from `--url`, else `MESHPILOT_<NAME>_URL`, else (Zipkin) the `zipkin` extension
provider of a MeshConfig given with `--mesh-config`; without any, the command says how to
configure one. Where no browser can be started (a server, an SSH session) the URL is printed to
open elsewhere; it is always printed.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from meshpilot.console.settings import DEFAULT_CONSOLE_ADDRESS
from meshpilot.diagnostics.controlz import DEFAULT_CONTROLZ_ADDRESS, ControlzClient, ControlzError
from meshpilot.diagnostics.options import TimeoutOption, fail
from meshpilot.model.meshconfig import load_mesh_config

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


BrowserOption = Annotated[
    bool, typer.Option("--browser/--no-browser", help="Open a browser when there is one.")
]


@group.command("console")
def console(
    address: Annotated[
        str, typer.Option("--address", metavar="HOST:PORT", help="The server's console.")
    ] = DEFAULT_CONSOLE_ADDRESS,
    browser: BrowserOption = True,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Open the mesh console (topology, services, proxies, config) of the discovery server."""
    url = f"http://{address}/"
    try:
        with urllib.request.urlopen(url + "login", timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code != 503:  # 503: the console runs but has no credential; its page says why
            fail(f"the console at {address} answered HTTP {error.code}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        fail(f"cannot reach the console at {address}: {reason} (is `meshpilot discovery` "
             "running with --console-address?)")
    typer.echo(url)
    if browser and not _open(url):
        typer.echo("no browser found here: open the URL above", err=True)


def _zipkin_from_mesh(path: Path) -> str:
    mesh = load_mesh_config(str(path))
    for provider in mesh.extension_providers:
        settings = provider.get("zipkin")
        if isinstance(settings, dict) and settings.get("service"):
            port = settings.get("port") or 9411
            return f"http://{settings['service']}:{port}/zipkin/"
    return ""


UrlOption = Annotated[str, typer.Option("--url", help="The dashboard's URL.")]
MeshConfigOption = Annotated[
    Path | None,
    typer.Option("--mesh-config", exists=True, dir_okay=False,
                 help="A MeshConfig whose zipkin extension provider names Zipkin."),
]


def _external(name: str, title: str, url: str, mesh_config: Path | None, browser: bool) -> None:
    env = f"MESHPILOT_{name.upper()}_URL"
    found = url or os.environ.get(env, "")
    if not found and mesh_config is not None:
        try:
            found = _zipkin_from_mesh(mesh_config)
        except (OSError, ValueError) as error:
            fail(str(error))
    if not found:
        where = " or give a --mesh-config with a zipkin extension provider" if (
            name == "zipkin") else ""
        fail(f"no {title} URL configured: give --url URL or set {env}{where} "
             f"(examples/observability/ has a {title} set-up for meshpilot)")
    if not found.startswith(("http://", "https://")):
        fail(f"the {title} URL must start with http:// or https://, got {found!r}")
    typer.echo(found)
    if browser and not _open(found):
        typer.echo("no browser found here: open the URL above", err=True)


@group.command("prometheus")
def prometheus(url: UrlOption = "", browser: BrowserOption = True) -> None:
    """Open Prometheus (its URL from --url or MESHPILOT_PROMETHEUS_URL)."""
    _external("prometheus", "Prometheus", url, None, browser)


@group.command("grafana")
def grafana(url: UrlOption = "", browser: BrowserOption = True) -> None:
    """Open Grafana (its URL from --url or MESHPILOT_GRAFANA_URL)."""
    _external("grafana", "Grafana", url, None, browser)


@group.command("zipkin")
def zipkin(
    url: UrlOption = "", mesh_config: MeshConfigOption = None, browser: BrowserOption = True
) -> None:
    """Open Zipkin (its URL from --url, MESHPILOT_ZIPKIN_URL, or MeshConfig's zipkin
    extension provider)."""
    _external("zipkin", "Zipkin", url, mesh_config, browser)


def _open(url: str) -> bool:
    try:
        return webbrowser.get().open(url)
    except webbrowser.Error:
        return False


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="dashboard")
