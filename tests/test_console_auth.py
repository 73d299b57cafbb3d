"""Console login building blocks: scrypt hashes, where credentials come from, signed sessions
that expire and can be revoked, CSRF tokens, and the failed-login limiter (fake clocks)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from meshpilot.console.auth import (
    GENERATED_FILE,
    CredentialError,
    LoginLimiter,
    Sessions,
    check_login,
    format_credentials,
    hash_password,
    load_credentials,
    parse_credentials,
    verify_password,
    write_credentials,
)
from meshpilot.console.settings import PASSWORD_ENV, ConsoleSettings


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_hashes_are_salted_scrypt_and_verify() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("scrypt$15$8$1$") and first != second  # a salt of its own each
    assert "correct horse" not in first
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    assert not verify_password("Correct horse", first)
    assert not verify_password("correct horse", "plain:text")
    assert not verify_password("x", "scrypt$15$8$1$!!$!!")


def test_credentials_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "users"
    users = {"ops": hash_password("p4ssword!"), "dev": hash_password("another-one")}
    write_credentials(path, users)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert parse_credentials(path.read_text(), str(path)) == users
    assert format_credentials(users).splitlines()[0].startswith("#")
    with pytest.raises(CredentialError, match=r"users:2: user 'ops': not a scrypt hash"):
        parse_credentials("# comment\nops:secret\n", "users")
    with pytest.raises(CredentialError, match=r"users:1: expected user:hash"):
        parse_credentials("no colon here\n", "users")
    with pytest.raises(CredentialError, match="no user:hash line"):
        parse_credentials("# only a comment\n", "users")


def test_credentials_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_credentials(path, {"ops": hash_password("p4ssword!")})
    found = load_credentials(ConsoleSettings(credentials_file=path, state_dir=tmp_path / "s"))
    assert not found.problem and set(found.users) == {"ops"}
    assert check_login(found, "ops", "p4ssword!")
    assert not check_login(found, "ops", "wrong")
    assert not check_login(found, "nobody", "p4ssword!")
    assert not (tmp_path / "s").exists()  # a configured file never generates anything


def test_a_broken_credentials_file_says_what_and_how_to_fix(tmp_path: Path) -> None:
    missing = load_credentials(ConsoleSettings(credentials_file=tmp_path / "nope"))
    assert missing.users == {}
    assert missing.problem.startswith("No console credential is configured: the credentials "
                                      f"file {tmp_path / 'nope'} cannot be used")
    assert "meshpilot console passwd --file" in missing.problem
    (tmp_path / "bad").write_text("ops:plaintext\n")
    bad = load_credentials(ConsoleSettings(credentials_file=tmp_path / "bad"))
    assert "not a scrypt hash" in bad.problem


def test_credentials_from_the_environment_hash() -> None:
    found = load_credentials(ConsoleSettings(password_hash=hash_password("from-env-1")))
    assert found.users.keys() == {"admin"} and PASSWORD_ENV in found.origin
    assert check_login(found, "admin", "from-env-1")


def test_generated_once_printed_once_then_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ConsoleSettings(state_dir=tmp_path / "state")
    with caplog.at_level(logging.WARNING, logger="meshpilot.console"):
        first = load_credentials(settings, generate=lambda: "generated-pw-1")
    printed = [r.getMessage() for r in caplog.records if "generated" in r.getMessage()]
    assert len(printed) == 1 and "password generated-pw-1" in printed[0]
    stored = (tmp_path / "state" / GENERATED_FILE).read_text()
    assert "generated-pw-1" not in stored and "admin:scrypt$" in stored
    assert stat.S_IMODE(os.stat(tmp_path / "state" / GENERATED_FILE).st_mode) == 0o600
    assert check_login(first, "admin", "generated-pw-1")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meshpilot.console"):
        again = load_credentials(settings, generate=lambda: "never-used")
    assert not caplog.records  # never printed a second time
    assert again.users == first.users and "printed once" in again.origin


def test_no_credential_and_none_can_be_generated(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    found = load_credentials(ConsoleSettings(state_dir=blocked / "state"))
    assert found.users == {}
    assert found.problem.startswith("No console credential is configured, and none could be "
                                    f"generated: {blocked / 'state' / GENERATED_FILE}")
    for fix in ("--console-credentials FILE", PASSWORD_ENV, "--state-dir"):
        assert fix in found.problem
    nowhere = load_credentials(ConsoleSettings())
    assert "no state directory" in nowhere.problem and PASSWORD_ENV in nowhere.problem


def test_sessions_expire_revoke_and_resist_tampering() -> None:
    clock = Clock()
    sessions = Sessions(ttl=60, clock=clock)
    session, cookie = sessions.issue("ops")
    assert sessions.check(cookie) == session and session.expires == clock.now + 60
    payload, _, signature = cookie.partition(".")
    forged = payload.replace(payload[2], "A" if payload[2] != "A" else "B") + "." + signature
    assert sessions.inspect(forged) == (None, "invalid")
    assert sessions.inspect(cookie + "x") == (None, "invalid")
    assert Sessions(ttl=60, clock=clock).inspect(cookie) == (None, "invalid")  # another key
    clock.now += 59
    assert sessions.check(cookie) is not None
    clock.now += 1
    assert sessions.inspect(cookie) == (None, "expired")

    other, cookie2 = sessions.issue("ops")
    sessions.revoke(other)
    assert sessions.inspect(cookie2) == (None, "logged out")
    assert sessions.inspect("") == (None, "none")


def test_csrf_tokens_belong_to_their_session() -> None:
    sessions = Sessions(ttl=60)
    one, _ = sessions.issue("ops")
    two, _ = sessions.issue("ops")
    token = sessions.csrf_token(one)
    assert sessions.check_csrf(one, token)
    assert not sessions.check_csrf(two, token)
    assert not sessions.check_csrf(one, "")


def test_limiter_blocks_after_repeated_failures_then_releases() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=3, window=60, clock=clock)
    keys = ("client:1.2.3.4", "user:ops")
    for _ in range(3):
        assert limiter.retry_after(keys) == 0
        limiter.failed(keys)
    assert limiter.retry_after(keys) == 60
    assert limiter.retry_after(("user:ops",)) == 60  # from another address too
    assert limiter.retry_after(("client:5.6.7.8", "user:dev")) == 0
    clock.now += 30
    assert limiter.retry_after(keys) == 30
    clock.now += 30
    assert limiter.retry_after(keys) == 0
    limiter.failed(keys)
    limiter.succeeded(keys)
    assert limiter.retry_after(keys) == 0


def test_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(max_failures=3, window=60, max_keys=100)
    for n in range(1000):
        limiter.failed((f"client:{n}",))
    assert len(limiter._failures) == 100
