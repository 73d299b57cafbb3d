"""Console login: password hashes, where credentials come from, signed sessions, CSRF, lockout.

Passwords are never stored or compared in clear. A hash is `scrypt$<log2 N>$<r>$<p>$<salt>$<key>`
(base64 salt and key): scrypt from `hashlib`, memory-hard, with a random 16-byte salt per hash;
checking one costs about 0.1 s, so it always runs in a worker thread, and a login for an unknown
user costs the same as for a known one (no user enumeration by timing).

Where the credentials come from, in order (`load_credentials`):

1. `--console-credentials FILE`: `user:hash` lines written by `meshpilot console passwd`;
2. `MESHPILOT_CONSOLE_PASSWORD`, read once by the CLI at start-up and hashed at once (user
   `admin`);
3. otherwise one is generated on first start: a random password for `admin`, its hash written
   to `<state dir>/console-credentials` (mode 0600), the password itself printed once to the
   log. Later starts find the file and reuse the hash; the password is never printed again.

When none of this yields a credential (an unreadable file, a state directory that cannot be
written), the console still starts and its login page says exactly what is missing and how to
fix it, rather than refusing logins without a reason.

A session is a signed cookie: `base64(json {user, issued, expires, id}) . base64(HMAC-SHA256)`
under a key drawn at start-up (so a restart ends every session). It is HttpOnly and
SameSite=Strict; logout revokes its id on the server until it would have expired anyway. Every
POST carries a CSRF token: for a session, an HMAC of the session id under the same key; for the
login form (before there is a session), a random token in a cookie that the form repeats
(double submit). Failed logins are counted per client address and per user name; after
`max_failures` within `window` seconds further attempts are refused until the window passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshpilot.console.settings import PASSWORD_ENV, ConsoleSettings

log = logging.getLogger("meshpilot.console")

SCHEME = "scrypt"
DEFAULT_LOG2_N = 15
DEFAULT_R = 8
DEFAULT_P = 1
_KEY_BYTES = 32
_MAXMEM = 128 * 1024 * 1024
GENERATED_USER = "admin"
GENERATED_FILE = "console-credentials"


class CredentialError(ValueError):
    """A credentials file or hash that cannot be used, with the reason."""


# Hashes ----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(
    password: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode(), salt=salt, n=2**log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=_KEY_BYTES
    )
    return f"{SCHEME}${log2_n}${r}${p}${_b64(salt)}${_b64(key)}"


def check_hash(encoded: str) -> None:
    """Raise CredentialError unless `encoded` is a hash this module can verify."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise CredentialError(
            f"not a {SCHEME} hash (expected {SCHEME}$N$r$p$salt$key, as `meshpilot console "
            "passwd` writes)"
        )
    try:
        log2_n, r, p = (int(x) for x in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error) as error:
        raise CredentialError(f"malformed {SCHEME} hash: {error}") from error
    if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and salt and len(key) >= 16):
        raise CredentialError(f"{SCHEME} parameters out of range (N=2^{log2_n}, r={r}, p={p})")


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded`; False for a malformed hash. Slow on purpose."""
    try:
        check_hash(encoded)
    except CredentialError:
        return False
    _, log2_n, r, p, salt, key = encoded.split("$")
    expected = _unb64(key)
    actual = hashlib.scrypt(
        password.encode(), salt=_unb64(salt), n=2 ** int(log2_n), r=int(r), p=int(p),
        maxmem=_MAXMEM, dklen=len(expected),
    )
    return hmac.compare_digest(actual, expected)


# A hash to check against when the user is unknown, so both cases cost the same.
_DUMMY_HASH = (
    f"{SCHEME}${DEFAULT_LOG2_N}${DEFAULT_R}${DEFAULT_P}${_b64(b'0' * 16)}${_b64(b'0' * 32)}"
)


# Credential files --------------------------------------------------------------------------------


def parse_credentials(text: str, source: str) -> dict[str, str]:
    """`user:hash` lines (blank lines and `#` comments allowed) → user → hash."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user:
            raise CredentialError(f"{source}:{number}: expected user:hash")
        try:
            check_hash(encoded)
        except CredentialError as error:
            raise CredentialError(f"{source}:{number}: user {user!r}: {error}") from None
        users[user] = encoded
    if not users:
        raise CredentialError(f"{source}: no user:hash line")
    return users


def format_credentials(users: Mapping[str, str]) -> str:
    lines = ["# meshpilot console credentials: user:scrypt hash (meshpilot console passwd)"]
    lines += [f"{user}:{encoded}" for user, encoded in sorted(users.items())]
    return "\n".join(lines) + "\n"


def write_credentials(path: Path, users: Mapping[str, str]) -> None:
    """Write (replace) a credentials file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(format_credentials(users))
    os.replace(tmp, path)


def _user_name_ok(user: str) -> bool:
    return bool(user) and ":" not in user and not any(c.isspace() for c in user)


def check_user_name(user: str) -> str:
    if not _user_name_ok(user):
        raise CredentialError(f"user name {user!r} must be non-empty, without ':' or spaces")
    return user


# Where credentials come from --------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    users: Mapping[str, str] = field(default_factory=dict)
    """User → hash; empty when `problem` says why."""
    origin: str = ""
    """Where they came from, in words (shown on the login page)."""
    problem: str = ""
    """Why there is no credential and how to fix it; '' when there are some."""
    hint: str = ""
    """What to log in with, without secrets or paths (the login page shows it to anyone)."""


FIXES = (
    f"start `meshpilot discovery` with --console-credentials FILE (write FILE with `meshpilot "
    f"console passwd --file FILE --user NAME`), or set {PASSWORD_ENV} in its environment, or "
    "give it a writable --state-dir so it can generate a password on its first start"
)


def load_credentials(
    settings: ConsoleSettings, generate: Callable[[], str] | None = None
) -> Credentials:
    """The console's credentials by the rules in the module docstring (blocking: run it in a
    thread)."""
    if settings.credentials_file is not None:
        path = settings.credentials_file
        try:
            users = parse_credentials(path.read_text(), str(path))
        except (OSError, UnicodeDecodeError, CredentialError) as error:
            return Credentials(problem=(
                f"No console credential is configured: the credentials file {path} cannot be "
                f"used ({error}). To fix it, write it with `meshpilot console passwd --file "
                f"{path} --user NAME` and restart the discovery server."
            ))
        return Credentials(users, f"the credentials file {path}",
                           hint="Log in as a user of the console credentials file.")
    if settings.password_hash:
        return Credentials({GENERATED_USER: settings.password_hash},
                           f"{PASSWORD_ENV} (user {GENERATED_USER})",
                           hint=f"Log in as {GENERATED_USER} with the password set in "
                           f"{PASSWORD_ENV}.")
    if settings.state_dir is None:
        return Credentials(problem=(
            f"No console credential is configured, and none can be generated because the "
            f"server has no state directory. To fix it, {FIXES}."
        ))
    return _generated(settings.state_dir / GENERATED_FILE, generate or _new_password)


def _new_password() -> str:
    return secrets.token_urlsafe(15)


def _generated(path: Path, generate: Callable[[], str]) -> Credentials:
    hint = (f"Log in as {GENERATED_USER} with the password the server printed to its log when "
            "it generated it on its first start.")
    origin = (f"a password generated on first start for user {GENERATED_USER}, kept hashed in "
              f"{path} (it was printed once to the server's log; to get a new one, delete that "
              "file and restart)")
    try:
        if path.exists():
            return Credentials(parse_credentials(path.read_text(), str(path)), origin, hint=hint)
        password = generate()
        encoded = hash_password(password)
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: when two servers share a state directory, one generates and the other reads.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(format_credentials({GENERATED_USER: encoded}))
    except FileExistsError:
        return _generated(path, generate)
    except (OSError, UnicodeDecodeError, CredentialError) as error:
        return Credentials(problem=(
            f"No console credential is configured, and none could be generated: {path}: "
            f"{getattr(error, 'strerror', None) or error}. To fix it, {FIXES}."
        ))
    # Printed once, now, and never again: only the hash is kept.
    log.warning(
        "console credential generated: user %s, password %s (shown only this once; stored "
        "hashed in %s)", GENERATED_USER, password, path,
    )
    return Credentials({GENERATED_USER: encoded}, origin, hint=hint)


def check_login(credentials: Credentials, user: str, password: str) -> bool:
    """Whether the pair is valid (blocking, ~0.1 s: run it in a thread)."""
    encoded = credentials.users.get(user)
    ok = verify_password(password, encoded or _DUMMY_HASH)
    return ok and encoded is not None


# Sessions and CSRF -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    issued: float
    expires: float
    id: str


class Sessions:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._revoked: dict[str, float] = {}
        """Session id → its expiry: logged out before it expired."""

    def _sign(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())

    def issue(self, user: str) -> tuple[Session, str]:
        now = self.clock()
        session = Session(user, now, now + self.ttl, secrets.token_urlsafe(16))
        body = json.dumps(
            {"u": user, "i": session.issued, "e": session.expires, "s": session.id},
            separators=(",", ":"),
        ).encode()
        return session, f"{_b64(body)}.{self._sign(body)}"

    def check(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, if its signature holds and it is live."""
        return self.inspect(cookie)[0]

    def inspect(self, cookie: str | None) -> tuple[Session | None, str]:
        """(session, '') for a live session, else (None, why): `none`, `invalid`, `expired`,
        `logged out`."""
        if not cookie:
            return None, "none"
        payload, _, signature = cookie.partition(".")
        try:
            body = _unb64(payload)
        except (ValueError, binascii.Error):
            return None, "invalid"
        if not hmac.compare_digest(self._sign(body), signature):
            return None, "invalid"  # forged, or signed before a restart (a new key)
        try:
            data = json.loads(body)
            session = Session(str(data["u"]), float(data["i"]), float(data["e"]), str(data["s"]))
        except (ValueError, KeyError, TypeError):
            return None, "invalid"
        if session.id in self._revoked:
            return None, "logged out"
        if self.clock() >= session.expires:
            return None, "expired"
        return session, ""

    def revoke(self, session: Session) -> None:
        now = self.clock()
        # Forget revocations of sessions that have expired anyway: the set stays bounded.
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        self._revoked[session.id] = session.expires

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.id}".encode())

    def check_csrf(self, session: Session, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token)


# Failed logins ---------------------------------------------------------------------------------


class LoginLimiter:
    """At most `max_failures` failed logins per key (client address, user) in `window` s."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until a login may be tried again for these keys; 0 when it may now."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[-self.max_failures] + self.window - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            self._failures.setdefault(key, []).append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:  # bounded memory under a spray of addresses
            self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)
