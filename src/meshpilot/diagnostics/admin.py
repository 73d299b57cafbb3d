"""A small client for Envoy's admin API (`/config_dump`, `/clusters`, `/logging`, `/certs`).

The agent registers each Envoy's admin address in its node metadata (`ADMIN_ADDRESS`), and the
server reports it in sync status, so a proxy named by node id can be reached without knowing
its port. Plain HTTP/1.1 with a timeout: admin endpoints are loopback-only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class AdminError(Exception):
    """Envoy's admin API could not be reached or refused; the message is for the user."""


class EnvoyAdmin:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout

    def _call(self, method: str, path: str) -> str:
        url = f"http://{self.address}{path}"
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace").strip()
            raise AdminError(f"Envoy admin {url}: HTTP {error.code}: {body}") from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise AdminError(f"cannot reach Envoy admin at {self.address}: {reason}") from error

    def get_json(self, path: str) -> Any:
        return json.loads(self._call("GET", path))

    def config_dump(self, include_eds: bool = False) -> dict[str, Any]:
        dump: dict[str, Any] = self.get_json(
            "/config_dump?include_eds" if include_eds else "/config_dump"
        )
        return dump

    def clusters(self) -> dict[str, Any]:
        """`/clusters?format=json`: every cluster's hosts with health and outlier state."""
        data: dict[str, Any] = self.get_json("/clusters?format=json")
        return data

    def certs(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get_json("/certs")
        return data

    def logging(self) -> str:
        return self._call("POST", "/logging")

    def set_log_level(self, level: str) -> str:
        """Every logger to `level`."""
        return self._call("POST", "/logging?" + urllib.parse.urlencode({"level": level}))

    def set_logger_levels(self, levels: dict[str, str]) -> str:
        """Named loggers to their levels in one call (`paths=name:level,…`)."""
        paths = ",".join(f"{name}:{level}" for name, level in levels.items())
        return self._call("POST", "/logging?" + urllib.parse.urlencode({"paths": paths}))


def parse_loggers(text: str) -> dict[str, str]:
    """Envoy's `/logging` answer (`active loggers:\\n  admin: info\\n…`) as name → level."""
    levels = {}
    for line in text.splitlines():
        name, sep, level = line.strip().partition(": ")
        if sep and not line.startswith("active"):
            levels[name] = level.strip()
    return levels
