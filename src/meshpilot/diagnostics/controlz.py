"""A client for the discovery server's ControlZ JSON API (`/scopej/`), as `istioctl admin log`
uses istiod's."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from meshpilot.diagnostics.output import Report, Table

DEFAULT_CONTROLZ_ADDRESS = "127.0.0.1:9876"
SCOPE_COLUMNS = ("ACTIVE SCOPE", "DESCRIPTION", "LOG LEVEL")
DEFAULT_LEVEL = "info"


class ControlzError(Exception):
    pass


class ControlzClient:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise ControlzError(
                f"ControlZ at {self.address}: HTTP {error.code}: {detail}"
            ) from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ControlzError(f"cannot reach ControlZ at {self.address}: {reason}") from error

    def scopes(self) -> list[dict[str, Any]]:
        scopes: list[dict[str, Any]] = self._call("GET", "/scopej/")
        return scopes

    def set_level(self, scope: str, level: str) -> dict[str, Any]:
        info: dict[str, Any] = self._call("PUT", f"/scopej/{scope}", {"output_level": level})
        return info

    def version(self) -> dict[str, Any]:
        info: dict[str, Any] = self._call("GET", "/versionj/")
        return info


def parse_levels(text: str, scopes: list[str]) -> dict[str, str]:
    """`debug` (every scope) or `xds:debug,default:info` into scope → level."""
    if ":" not in text:
        return {scope: text for scope in scopes}
    levels = {}
    for item in text.split(","):
        scope, _, level = item.partition(":")
        if scope not in scopes:
            raise ControlzError(f"no scope {scope!r}; scopes: {', '.join(scopes)}")
        levels[scope] = level
    return levels


def scopes_report(scopes: list[dict[str, Any]]) -> Report:
    rows = [[s["name"], s["description"], s["output_level"]] for s in scopes]
    return Report(Table(SCOPE_COLUMNS, rows), scopes)
