"""A bounded history of xDS pushes per proxy: what was sent, when, and what the proxy said.

The ADS server (xds/server.py) calls three hooks: `sent` when a response leaves for a proxy
(with the resources it changed and removed), `acked` and `nacked` when the proxy answers that
response's nonce. An event then holds its type, version, nonce, what changed, the verdict and
the time from sending to the verdict ("time to apply": Envoy acknowledges a response once it has
applied it, or rejects it with its reason).

Memory is bounded twice: each proxy keeps its last `per_proxy` events in a ring buffer, and at
most `max_proxies` proxies are remembered (the least recently active ones are forgotten first),
so a mesh of any size and age costs at most `per_proxy * max_proxies` events. Names of changed
resources are cut to `max_names` per event, with the full counts kept.

No imports from the rest of meshpilot: the xDS layer depends on this module, not the reverse.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

PENDING = "PENDING"
ACK = "ACK"
NACK = "NACK"
SUPERSEDED = "SUPERSEDED"
"""Another response of the same type was sent before this one was answered."""


@dataclass(slots=True)
class PushEvent:
    proxy: str
    connection: str
    type: str
    """Short type name: CDS, EDS, LDS, RDS, SDS."""
    version: str
    nonce: str
    sent_at: float
    resources: int
    """Resources in the response."""
    changed: int
    removed: int
    changed_names: tuple[str, ...] = ()
    removed_names: tuple[str, ...] = ()
    status: str = PENDING
    answered_at: float = 0.0
    error: str = ""

    @property
    def apply_seconds(self) -> float | None:
        return self.answered_at - self.sent_at if self.answered_at else None

    def to_json(self) -> dict[str, Any]:
        seconds = self.apply_seconds
        return {
            "proxy": self.proxy,
            "connection": self.connection,
            "type": self.type,
            "version": self.version,
            "nonce": self.nonce,
            "sentAt": self.sent_at,
            "resources": self.resources,
            "changed": self.changed,
            "removed": self.removed,
            "changedNames": list(self.changed_names),
            "removedNames": list(self.removed_names),
            "status": self.status,
            "answeredAt": self.answered_at or None,
            "applySeconds": round(seconds, 6) if seconds is not None else None,
            "error": self.error,
        }


@dataclass
class _Proxy:
    events: deque[PushEvent]
    waiting: dict[tuple[str, str], PushEvent] = field(default_factory=dict)
    """(connection, type) → the response sent last and not answered yet."""


class PushHistory:
    def __init__(
        self,
        per_proxy: int = 100,
        max_proxies: int = 5000,
        max_names: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_proxy = per_proxy
        self.max_proxies = max_proxies
        self.max_names = max_names
        self.clock = clock
        self._proxies: OrderedDict[str, _Proxy] = OrderedDict()
        self._diffs: dict[tuple[int, int, bool], tuple[Any, ...]] = {}
        self.total = 0

    def _proxy(self, proxy: str) -> _Proxy:
        entry = self._proxies.get(proxy)
        if entry is None:
            entry = self._proxies[proxy] = _Proxy(deque(maxlen=self.per_proxy))
            while len(self._proxies) > self.max_proxies:
                self._proxies.popitem(last=False)
        self._proxies.move_to_end(proxy)
        return entry

    # Hooks called by the ADS server ------------------------------------------------------------

    def sent(
        self,
        proxy: str,
        connection: str,
        type_name: str,
        version: str,
        nonce: str,
        resources: int,
        changed: Collection[str],
        removed: Collection[str] = (),
    ) -> None:
        self._record(proxy, connection, type_name, version, nonce, resources, len(changed),
                     len(removed), self._names(changed), self._names(removed))

    def _names(self, names: Collection[str]) -> tuple[str, ...]:
        return tuple(sorted(names)[: self.max_names])

    def _record(
        self,
        proxy: str,
        connection: str,
        type_name: str,
        version: str,
        nonce: str,
        resources: int,
        changed: int,
        removed: int,
        changed_names: tuple[str, ...],
        removed_names: tuple[str, ...],
    ) -> None:
        entry = self._proxy(proxy)
        event = PushEvent(
            proxy, connection, type_name, version, nonce, self.clock(), resources,
            changed, removed, changed_names, removed_names,
        )
        previous = entry.waiting.get((connection, type_name))
        if previous is not None and previous.status == PENDING:
            previous.status = SUPERSEDED
        entry.waiting[(connection, type_name)] = event
        entry.events.append(event)
        self.total += 1

    def sent_state(
        self,
        proxy: str,
        connection: str,
        type_name: str,
        version: str,
        nonce: str,
        previous: Mapping[str, str],
        current: Mapping[str, str],
        partial: bool,
    ) -> None:
        """A State-of-the-World response: `current` (name → version) replaces `previous`
        whole, or, when `partial` (an EDS subset), only updates the names it carries."""
        # Proxies that held the same set and were sent the same set (shared dicts) share one
        # diff: comparing 1,200 names per proxy was a fifth of a full push's CPU.
        key = (id(previous), id(current), partial)
        diff = self._diffs.get(key)
        if diff is None or diff[0] is not previous or diff[1] is not current:
            changed = [name for name, v in current.items() if previous.get(name) != v]
            removed = [] if partial else [name for name in previous if name not in current]
            if len(self._diffs) >= 64:
                self._diffs.clear()
            diff = self._diffs[key] = (
                previous, current, len(changed), len(removed),
                self._names(changed), self._names(removed),
            )
        _, _, changed_count, removed_count, changed_names, removed_names = diff
        self._record(proxy, connection, type_name, version, nonce, len(current),
                     changed_count, removed_count, changed_names, removed_names)

    def acked(self, proxy: str, connection: str, type_name: str, nonce: str) -> None:
        self._answer(proxy, connection, type_name, nonce, ACK, "")

    def nacked(self, proxy: str, connection: str, type_name: str, nonce: str, error: str) -> None:
        self._answer(proxy, connection, type_name, nonce, NACK, error)

    def _answer(
        self, proxy: str, connection: str, type_name: str, nonce: str, status: str, error: str
    ) -> None:
        entry = self._proxies.get(proxy)
        if entry is None:
            return
        event = entry.waiting.get((connection, type_name))
        # Delta NACKs may come without the nonce echoed; SotW answers name it.
        if event is None or (nonce and event.nonce != nonce):
            return
        del entry.waiting[(connection, type_name)]
        event.status = status
        event.error = error
        event.answered_at = self.clock()

    def disconnected(self, proxy: str, connection: str) -> None:
        """Forget what a closed stream was waiting for (its events stay in the history)."""
        entry = self._proxies.get(proxy)
        if entry is not None:
            for key in [k for k in entry.waiting if k[0] == connection]:
                del entry.waiting[key]

    # Reading -----------------------------------------------------------------------------------

    def events(self, proxy: str) -> list[PushEvent]:
        """The proxy's remembered events, newest first."""
        entry = self._proxies.get(proxy)
        return list(reversed(entry.events)) if entry is not None else []
