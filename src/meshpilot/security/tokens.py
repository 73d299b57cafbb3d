"""Bootstrap tokens: proof, for a workload's first certificate request, of the identity it may
hold.

`meshpilot token create --ca-dir DIR --namespace NS --service-account SA` writes one. A token is
`<payload>.<mac>`, both base64url: the payload is JSON {trust domain, namespace, service account,
expiry, id} and the MAC an HMAC-SHA256 of it under a key only the control plane holds
(`DIR/token-key`, created with the CA, mode 0600). The agent presents it as gRPC metadata
(`authorization: Bearer <token>`); the CA then signs for exactly that identity. A token is a
bearer secret until it expires: give it a short `--ttl` and renew with the workload's
certificate afterwards, which needs no token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from meshpilot.model.security import Identity

TOKEN_KEY = "token-key"
DEFAULT_TOKEN_TTL = 24 * 3600.0


class TokenError(ValueError):
    """The token is malformed, forged or expired; the message says which, never the token."""


def load_or_create_key(ca_dir: Path) -> bytes:
    path = ca_dir / TOKEN_KEY
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    ca_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        # O_EXCL: two processes creating it at once keep the first key, not a mix.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create_token(key: bytes, identity: Identity, ttl: float = DEFAULT_TOKEN_TTL,
                 now: float | None = None) -> str:
    issued = time.time() if now is None else now
    payload = json.dumps({
        "td": identity.trust_domain, "ns": identity.namespace, "sa": identity.service_account,
        "exp": int(issued + ttl), "jti": secrets.token_hex(8),
    }, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_token(key: bytes, token: str, now: float | None = None) -> Identity:
    """The identity a valid token proves; TokenError otherwise."""
    head, dot, tail = token.strip().partition(".")
    if not dot:
        raise TokenError("malformed bootstrap token")
    try:
        payload, mac = _unb64(head), _unb64(tail)
    except ValueError:
        raise TokenError("malformed bootstrap token") from None
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise TokenError("bootstrap token signature is invalid")
    try:
        claims = json.loads(payload)
        identity = Identity(str(claims["td"]), str(claims["ns"]), str(claims["sa"]))
        expiry = float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed bootstrap token") from None
    if (time.time() if now is None else now) >= expiry:
        raise TokenError("bootstrap token has expired")
    return identity
