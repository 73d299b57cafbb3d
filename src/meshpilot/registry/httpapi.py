"""The HTTP side shared by the Consul, Eureka and Nacos adapters (aiohttp).

A registry URL may name several servers (`consul://a:8500,b:8500`). `HttpApi` sends each
request to the current server and, when that one cannot be reached, moves on to the next for
the following request — the adapter's own retry loop (with the catalog's backoff) does the
retrying, so one dead server never blocks the others for long.

Every way a request can fail becomes a `RegistryError` (or `TimeoutError`), the exceptions the
registry loop treats as "source unreachable": aiohttp's own errors are not all `OSError`s (a
server that drops the connection mid-response raises `ServerDisconnectedError`), and a body
that is not JSON must not escape as an unexpected crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from meshpilot.registry.catalog import RegistryError
from meshpilot.registry.urls import RegistryUrl

DEFAULT_TIMEOUT = 10.0
"""Seconds for one non-blocking request, connect included."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any
    """The parsed JSON body (or the text, for `text=True` requests)."""


class HttpError(RegistryError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApi:
    """An aiohttp session over the URL's servers; use as `async with HttpApi(url) as api`."""

    def __init__(
        self, url: RegistryUrl, headers: Mapping[str, str] | None = None, connections: int = 100
    ) -> None:
        self.url = url
        self._connections = connections
        self._scheme = "https" if url.flag("tls") else "http"
        self._headers = dict(headers or {})
        self._current = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpApi:
        # No connection reuse across watch() attempts: a restarted server gets fresh sockets.
        self._session = aiohttp.ClientSession(
            headers=self._headers, connector=aiohttp.TCPConnector(limit=self._connections))
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def server(self) -> str:
        host, port = self.url.hosts[self._current % len(self.url.hosts)]
        host = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{host}:{port}"

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        seconds: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        text: bool = False,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        """One request of at most `seconds`; statuses outside `ok` raise `HttpError`."""
        assert self._session is not None, "use HttpApi as an async context manager"
        target = self.server + path
        try:
            async with self._session.request(
                method,
                target,
                params=dict(params or {}),
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                raw = await response.read()
                status, response_headers = response.status, response.headers
        except aiohttp.ClientError as error:
            self._current += 1  # next request goes to the next server, if there is one
            raise RegistryError(f"{method} {target}: {type(error).__name__}: {error}") from error
        except TimeoutError:
            self._current += 1
            raise
        body_text = raw.decode("utf-8", errors="replace")
        if status not in ok:
            raise HttpError(status, f"{method} {target}: HTTP {status}: {body_text[:200]}")
        if text:
            return Response(status, response_headers, body_text)
        try:
            body = json.loads(body_text) if body_text.strip() else None
        except json.JSONDecodeError as error:
            raise RegistryError(f"{method} {target}: malformed JSON: {error}") from error
        return Response(status, response_headers, body)

    async def get(
        self, path: str, params: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Response:
        return await self.request("GET", path, params, **kwargs)


def duration(text: str) -> float:
    """Seconds from Go-style durations as registries write them: `500ms`, `10s`, `5m`, `1h`,
    or a bare number of seconds."""
    text = text.strip()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, factor in units:
        if text.endswith(suffix) and not (suffix == "s" and text.endswith("ms")):
            number = text[: -len(suffix)]
            return float(number) * factor
    return float(text)


def as_dict(value: Any, what: str) -> dict[str, Any]:
    """`value` if it is a JSON object, else a RegistryError naming `what` was expected."""
    if not isinstance(value, dict):
        raise RegistryError(f"expected a JSON object for {what}, got {type(value).__name__}")
    return value


def as_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise RegistryError(f"expected a JSON array for {what}, got {type(value).__name__}")
    return value


def string_map(value: Any) -> dict[str, str]:
    """Metadata as labels: string keys to string values, anything else dropped."""
    if not isinstance(value, dict):
        return {}
    return {
        str(k): str(v) for k, v in value.items() if isinstance(v, str | int | float | bool)
    }
