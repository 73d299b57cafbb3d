"""JSON Web Key Sets named by `jwksUri`, fetched by the control plane and inlined in config.

As istiod does by default, the server fetches each key set itself and puts it into the
jwt_authn filter inline, so proxies need no route to the identity provider. `file://` URIs are
read when asked for; `http://` and `https://` ones are fetched in the background: until the
first fetch succeeds (and whenever it fails) the key set is one no token can match, so tokens
are refused (401) rather than trusted — Istio's fail-closed behaviour. A fetched set is
refreshed every `refresh` seconds; a change calls `changed` so the server pushes it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("meshpilot.security")


def _unmatchable_jwks() -> str:
    """A well-formed key set with one EC key whose private half is thrown away at once: Istio's
    placeholder idea, so Envoy accepts the config and every token fails verification."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    key = {"kty": "EC", "crv": "P-256", "kid": "meshpilot-unfetched", "alg": "ES256",
           "x": b64(numbers.x), "y": b64(numbers.y)}
    return json.dumps({"keys": [key]})


UNMATCHABLE_JWKS = _unmatchable_jwks()
REFRESH_SECONDS = 20 * 60.0
FETCH_TIMEOUT = 5.0


class JwksResolver:
    def __init__(
        self, changed: Callable[[], None] | None = None, refresh: float = REFRESH_SECONDS
    ) -> None:
        self.changed = changed
        self.refresh = refresh
        self.fetched: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def jwks(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            try:
                return Path(unquote(parsed.path)).read_text(encoding="utf-8")
            except OSError as error:
                log.warning("cannot read JWKS %s: %s", uri, error)
                return UNMATCHABLE_JWKS
        if uri not in self._tasks:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return self.fetched.get(uri, UNMATCHABLE_JWKS)  # offline translation
            self._tasks[uri] = loop.create_task(self._keep_fetching(uri))
        return self.fetched.get(uri, UNMATCHABLE_JWKS)

    async def _keep_fetching(self, uri: str) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
                    async with session.get(uri, timeout=timeout) as response:
                        response.raise_for_status()
                        text = await response.text()
                    if not isinstance(json.loads(text).get("keys"), list):
                        raise ValueError("not a JSON Web Key Set")
                except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                    log.warning("cannot fetch JWKS %s: %s", uri, error)
                    text = UNMATCHABLE_JWKS
                if self.fetched.get(uri) != text:
                    self.fetched[uri] = text
                    if self.changed is not None:
                        self.changed()
                # After a failure, try again soon; a good key set is refreshed slowly.
                await asyncio.sleep(self.refresh if text != UNMATCHABLE_JWKS else 5.0)

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
