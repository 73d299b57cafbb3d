"""Settings of the mesh console, carried inside `DiscoverySettings.console`.

The CLI reads every input once at start-up (flags, and `MESHPILOT_CONSOLE_PASSWORD` from the
environment, which it hashes at once) and hands the result down here; nothing in the console
reads the environment or the file system on import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONSOLE_ADDRESS = "127.0.0.1:15016"
DEFAULT_SESSION_TTL = 8 * 3600.0
PASSWORD_ENV = "MESHPILOT_CONSOLE_PASSWORD"
DASHBOARDS = ("prometheus", "grafana", "zipkin")


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/meshpilot`, else `~/.local/state/meshpilot` (called by the CLI only)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshpilot"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    address: str = DEFAULT_CONSOLE_ADDRESS
    """Where the console listens (loopback by default); '' turns the console off."""
    credentials_file: Path | None = None
    """`user:hash` lines written by `meshpilot console passwd`."""
    password_hash: str = ""
    """The hash of `MESHPILOT_CONSOLE_PASSWORD` (user `admin`), hashed by the CLI at start."""
    state_dir: Path | None = None
    """Where a generated credential is kept (hashed); None: no generated credential."""
    session_ttl: float = DEFAULT_SESSION_TTL
    """Seconds a login stays valid."""
    stats_interval: float = 5.0
    """Seconds between two polls of every connected Envoy's stats."""
    stats_window: float = 60.0
    """Rates and latencies are computed over this many seconds of samples."""
    stats_concurrency: int = 16
    """At most this many Envoy admin requests at once."""
    stats_timeout: float = 3.0
    """Seconds one Envoy gets to answer a stats request."""
    dashboards: Mapping[str, str] = field(default_factory=dict)
    """`prometheus`/`grafana`/`zipkin` → URL, linked from the console."""
