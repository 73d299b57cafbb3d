"""`meshpilot analyze`: Istio-compatible configuration analysis, mirroring `istioctl analyze`.

Offline analysis of files is the default (`--use-kube=false`, istioctl's flag). Live analysis
(`--use-kube=true`, or `--live`) asks the running discovery server at `--xds-address` for
its config (with origins) and its registries' services over xDS (the `istio.io/debug` type,
topic `analysis_inputs`), lays the files given on top (a file's resource replaces the
server's resource of the same kind, namespace and name) and analyzes the whole, so a change
can be checked against the live mesh before it is written. Without files it analyzes the
server's config as served.

Exit codes follow istioctl: with `-o log`, 79 when a message reaches `--failure-threshold`,
otherwise 65 when some file could not be parsed; 0 in every other case (including any
findings with `-o json` or `-o yaml`, which are meant for machines); 2 for usage errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from meshpilot.analysis.analyzer import Analyzer
from meshpilot.analysis.analyzers import ALL, BY_NAME, OPTIONAL
from meshpilot.analysis.live import analyze_live, parse_server_inputs
from meshpilot.analysis.loader import load_mapping_file
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import Level
from meshpilot.analysis.offline import AnalysisResult, analyze_paths
from meshpilot.analysis.output import FORMATS, log_line, render_json, render_yaml
from meshpilot.analysis.suppress import Suppression
from meshpilot.diagnostics import xdsclient

EXIT_FOUND_ISSUES = 79
EXIT_PARSE_ERROR = 65
DEFAULT_NAMESPACE = "default"


def _level(value: str) -> Level:
    try:
        return Level.parse(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def _truth(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "t", "yes"):
        return True
    if lowered in ("false", "0", "f", "no"):
        return False
    raise typer.BadParameter(f"expected true or false, got {value!r}")


def _select_analyzers(names: list[str]) -> list[Analyzer]:
    if not names:
        return list(ALL)
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        raise typer.BadParameter(
            f"unknown analyzer(s) {', '.join(unknown)}; see --list-analyzers",
            param_hint="--analyzer",
        )
    return [BY_NAME[name] for name in dict.fromkeys(names)]


def _mesh_config(mesh_file: Path | None, networks_file: Path | None) -> MeshConfig:
    try:
        mesh = load_mapping_file(str(mesh_file)) if mesh_file else None
        networks = load_mapping_file(str(networks_file)) if networks_file else None
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error)) from error
    return MeshConfig.from_user(mesh, networks, str(networks_file or ""))


def _list_analyzers(console: Console) -> None:
    console.print("Available analyzers:", highlight=False)
    for analyzer in sorted(ALL, key=lambda a: a.name):
        console.print(f"* {analyzer.name}: {analyzer.description}", highlight=False,
                      soft_wrap=True)
    for analyzer in sorted(OPTIONAL, key=lambda a: a.name):
        console.print(f"* {analyzer.name}: {analyzer.description} (only with --analyzer)",
                      highlight=False, soft_wrap=True)


def _target(namespace: str | None) -> str:
    return f"namespace: {namespace}" if namespace else "all namespaces"


def analyze(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Files or directories to analyze (recursively), or - for stdin."),
    ] = None,
    use_kube: Annotated[
        str,
        typer.Option("--use-kube", metavar="BOOL",
                     help="true: analyze the running server's config and registries with the "
                     "files laid on top; false: the files alone."),
    ] = "false",
    live: Annotated[
        bool, typer.Option("--live", help="Same as --use-kube=true.")
    ] = False,
    xds_address: Annotated[
        str, typer.Option("--xds-address", help="The discovery server to ask in live mode.")
    ] = xdsclient.DEFAULT_XDS_ADDRESS,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the server (live mode).")
    ] = 10.0,
    analyzer: Annotated[
        list[str] | None,
        typer.Option("--analyzer", help="Run only this analyzer (repeatable)."),
    ] = None,
    list_analyzers: Annotated[
        bool, typer.Option("--list-analyzers", "-L", help="List the analyzers and exit.")
    ] = False,
    suppress: Annotated[
        list[str] | None,
        typer.Option("--suppress", "-S",
                     help='Suppress a code on resources: "CODE=Kind namespace/name", * globs.'),
    ] = None,
    mesh_config_file: Annotated[
        Path | None,
        typer.Option("--meshConfigFile", help="MeshConfig YAML to use instead of the defaults.",
                     exists=True, dir_okay=False),
    ] = None,
    mesh_networks_file: Annotated[
        Path | None,
        typer.Option("--meshNetworksFile", help="MeshNetworks YAML for multi-network checks.",
                     exists=True, dir_okay=False),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n",
                     help="Namespace for resources without one; only its findings are shown."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Show findings in all namespaces.")
    ] = False,
    output_threshold: Annotated[
        str, typer.Option("--output-threshold", help="Lowest level shown: Info, Warning, Error.")
    ] = "Info",
    failure_threshold: Annotated[
        str, typer.Option("--failure-threshold",
                          help="Lowest level that fails the command (log output).")
    ] = "Error",
    output: Annotated[
        str, typer.Option("--output", "-o", help="Output format: log, json or yaml.")
    ] = "log",
    recursive: Annotated[
        bool, typer.Option("--recursive/--no-recursive", "-R",
                           help="Walk directories recursively (else only their top level).")
    ] = True,
    ignore_unknown: Annotated[
        bool, typer.Option("--ignore-unknown", help="Do not fail on unparseable files.")
    ] = False,
    color: Annotated[
        bool | None, typer.Option("--color/--no-color",
                                  help="Colour the log output (default: only on a terminal).")
    ] = None,
) -> None:
    """Analyze Istio configuration and report problems, as istioctl analyze does."""
    console = Console(file=sys.stdout, force_terminal=color, no_color=color is False,
                      highlight=False, soft_wrap=True)
    if list_analyzers:
        _list_analyzers(console)
        return
    live = live or _truth(use_kube)
    if output not in FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(FORMATS)}", param_hint="--output")
    shown_level, failing_level = _level(output_threshold), _level(failure_threshold)
    try:
        suppressions = [Suppression.parse(rule) for rule in suppress or ()]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--suppress") from error
    selected = None if all_namespaces else (namespace or DEFAULT_NAMESPACE)
    if not paths and not live:
        raise typer.BadParameter("give files, directories or - to analyze (offline mode)",
                                 param_hint="PATHS")
    chosen = _select_analyzers(analyzer or [])
    mesh = _mesh_config(mesh_config_file, mesh_networks_file)
    # Live, the server's mesh config applies unless the caller brings one.
    own_mesh = mesh if mesh_config_file or mesh_networks_file else None
    if live:
        try:
            inputs = parse_server_inputs(
                xdsclient.topic(xds_address, "analysis_inputs", timeout=timeout))
        except (xdsclient.ServerError, ValueError) as error:
            typer.echo(f"Error: {error}", err=True)
            raise typer.Exit(1) from error
        result = analyze_live(inputs, paths or [], namespace=selected, analyzers=chosen,
                              mesh=own_mesh, suppressions=suppressions, recursive=recursive)
    else:
        result = analyze_paths(paths or [], namespace=selected, analyzers=chosen, mesh=mesh,
                               suppressions=suppressions, recursive=recursive)
    for problem in result.errors:
        typer.echo(f"Error: {problem}", err=True)
    shown = [m for m in result.messages if m.level.rank >= shown_level.rank]
    if output == "json":
        typer.echo(render_json(shown))
    elif output == "yaml":
        typer.echo(render_yaml(shown), nl=False)
    else:
        _print_log(console, result, shown, selected)
        raise typer.Exit(_exit_code(result, failing_level, ignore_unknown))


def _print_log(console: Console, result: AnalysisResult, shown: list[Message],
               namespace: str | None) -> None:
    for message in shown:
        console.print(log_line(message))
    if not shown and not result.errors:
        typer.echo(f"\u2714 No validation issues found when analyzing {_target(namespace)}.",
                   err=True)


def _exit_code(result: AnalysisResult, failing_level: Level, ignore_unknown: bool) -> int:
    if any(m.level.rank >= failing_level.rank for m in result.messages):
        return EXIT_FOUND_ISSUES
    if result.errors and not ignore_unknown:
        return EXIT_PARSE_ERROR
    return 0


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
