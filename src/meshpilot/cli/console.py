"""`meshpilot console passwd`, and the console's options of `meshpilot discovery`.

`console passwd` writes (or updates) a credentials file: one `user:hash` line per user, the
password hashed with scrypt (see console/auth.py), the file readable by its owner only. The
password is asked twice on a terminal, or read from standard input with `--password-stdin`
(for scripts: `printf %s "$PW" | meshpilot console passwd --file F --user ops
--password-stdin`); it is never taken as an argument, where `ps` would show it.

`console_settings` turns the discovery command's console flags into `ConsoleSettings`. It is
the one place that reads `MESHPILOT_CONSOLE_PASSWORD`: once, at start-up, hashing it at once and
removing it from the environment, so neither ControlZ's environment page nor a child process
ever sees it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from meshpilot.console.auth import (
    CredentialError,
    check_user_name,
    hash_password,
    parse_credentials,
    write_credentials,
)
from meshpilot.console.settings import (
    DASHBOARDS,
    DEFAULT_CONSOLE_ADDRESS,
    DEFAULT_SESSION_TTL,
    PASSWORD_ENV,
    ConsoleSettings,
    default_state_dir,
)

group = typer.Typer(name="console", help="The mesh console's credentials.", no_args_is_help=True)


@group.command("passwd")
def passwd(
    file: Annotated[Path, typer.Option("--file", "-f", help="The credentials file to write "
                                       "(created if missing; other users are kept).")],
    user: Annotated[str, typer.Option("--user", "-u", help="The user to set.")] = "admin",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the user instead.")] = False,
) -> None:
    """Set (or delete) a console user's password in a credentials file."""
    try:
        check_user_name(user)
        users = parse_credentials(file.read_text(), str(file)) if file.exists() else {}
    except (OSError, CredentialError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    if delete:
        if users.pop(user, None) is None:
            typer.echo(f"error: no user {user!r} in {file}", err=True)
            raise typer.Exit(1)
        if not users:
            typer.echo(f"error: {user!r} is the last user of {file}; delete the file instead",
                       err=True)
            raise typer.Exit(1)
    else:
        if password_stdin:
            password = sys.stdin.read().rstrip("\r\n")
        else:
            password = typer.prompt(f"Password for {user}", hide_input=True,
                                    confirmation_prompt=True)
        if len(password) < 8:
            typer.echo("error: the password must have at least 8 characters", err=True)
            raise typer.Exit(1)
        users[user] = hash_password(password)
    try:
        write_credentials(file, users)
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    action = "removed" if delete else "set"
    typer.echo(f"{action} {user} in {file}; restart meshpilot discovery "
               f"(--console-credentials {file}) to use it")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="console")


# Options of `meshpilot discovery` ----------------------------------------------------------------

ConsoleAddressOption = Annotated[
    str,
    typer.Option("--console-address", metavar="HOST:PORT",
                 help="Where the mesh console listens (loopback by default); '' turns it off."),
]
ConsoleCredentialsOption = Annotated[
    Path | None,
    typer.Option("--console-credentials", metavar="FILE", dir_okay=False,
                 help="Console users: user:hash lines (`meshpilot console passwd`). Without it: "
                 f"{PASSWORD_ENV}, else a password generated on first start (printed once)."),
]
SessionTtlOption = Annotated[
    float, typer.Option("--console-session-ttl", help="Seconds a console login stays valid.")
]
StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", file_okay=False,
                 help="Where the server keeps state such as a generated console credential "
                 "(default $XDG_STATE_HOME/meshpilot or ~/.local/state/meshpilot)."),
]
StatsIntervalOption = Annotated[
    float, typer.Option("--console-stats-interval",
                        help="Seconds between polls of every Envoy's stats for the console.")
]
DashboardOption = Annotated[
    list[str] | None,
    typer.Option("--dashboard", metavar="NAME=URL",
                 help="Link the console to prometheus=URL, grafana=URL or zipkin=URL "
                 "(repeatable)."),
]

__all__ = [
    "DEFAULT_CONSOLE_ADDRESS",
    "DEFAULT_SESSION_TTL",
    "ConsoleAddressOption",
    "ConsoleCredentialsOption",
    "DashboardOption",
    "SessionTtlOption",
    "StateDirOption",
    "StatsIntervalOption",
    "console_settings",
    "passwd",
    "register",
]


def console_settings(
    address: str,
    credentials: Path | None,
    session_ttl: float,
    state_dir: Path | None,
    stats_interval: float,
    dashboards: list[str] | None,
) -> ConsoleSettings:
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise typer.BadParameter(f"expected HOST:PORT, got {address!r}",
                                     param_hint="--console-address")
    if session_ttl <= 0:
        raise typer.BadParameter("must be positive", param_hint="--console-session-ttl")
    if stats_interval <= 0:
        raise typer.BadParameter("must be positive", param_hint="--console-stats-interval")
    links: dict[str, str] = {}
    for entry in dashboards or ():
        name, sep, url = entry.partition("=")
        if not sep or name not in DASHBOARDS or not url.startswith(("http://", "https://")):
            raise typer.BadParameter(
                f"expected {'|'.join(DASHBOARDS)}=http(s)://…, got {entry!r}",
                param_hint="--dashboard")
        links[name] = url
    # Read once, here, and removed: see the module docstring.
    password = os.environ.pop(PASSWORD_ENV, "")
    return ConsoleSettings(
        address=address,
        credentials_file=credentials,
        password_hash=hash_password(password) if password and address else "",
        state_dir=state_dir or default_state_dir(),
        session_ttl=session_ttl,
        stats_interval=stats_interval,
        dashboards=links,
    )
