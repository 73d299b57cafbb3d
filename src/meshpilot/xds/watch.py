"""Per-connection, per-type state, and the rules for answering a request.

`WatchState` is the record proxy-status reads: what was sent (nonce, version, when), what the
proxy acknowledged, and the last error it reported.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(slots=True)
class WatchState:
    type_url: str
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    nonce_sent: str = ""
    nonce_acked: str = ""
    version_sent: str = ""
    version_acked: str = ""
    last_error: str = ""
    last_send_time: float = 0.0
    last_ack_time: float = 0.0
    sent: dict[str, str] = field(default_factory=dict)
    """Resource name → version the proxy was last sent (Delta) or holds (SotW)."""
    acked_once: bool = False
    requested: tuple[int, int] | None = None
    """Key of the SotW `resource_names` list that `names` was built from (`_names_body` in
    xds/server.py): an ACK repeating it reuses `names` instead of building a new set."""
    name_sets: int = 0
    """How many later requests had their names hashed into a set (for tests and profiles)."""


class Decision(enum.StrEnum):
    INITIAL = "initial request"
    RECONNECT = "request after reconnect"
    NACK = "nack"
    STALE = "stale nonce"
    ACK = "ack"
    RESUBSCRIBE = "subscription change"


RESPOND = frozenset({Decision.INITIAL, Decision.RECONNECT, Decision.RESUBSCRIBE})


def decide(
    state: WatchState | None, nonce: str, error: str | None, names: frozenset[str]
) -> Decision:
    """How to treat a State-of-the-World request; the server answers only `RESPOND` ones."""
    # 1. An error detail is a NACK: remember it, send nothing until the next push.
    if error:
        return Decision.NACK
    # 2. First request of this type on this stream: always answer.
    if state is None:
        return Decision.INITIAL
    # 3. No nonce on a type we already watch: the proxy lost its state (e.g. reconnected).
    if not nonce:
        return Decision.RECONNECT
    # 4. A nonce other than the last one sent answers an older response: ignore it.
    if nonce != state.nonce_sent:
        return Decision.STALE
    # 5. It acknowledges the last response. Different names mean a new subscription (also
    #    for a wildcard: naming resources, or `*`, changes it).
    if names != state.names:
        return Decision.RESUBSCRIBE
    return Decision.ACK
