"""One connected proxy: its identity, its watches, and the pushes waiting for it.

Pushes for a connection coalesce: while one is waiting, later ones merge into it with
`PushRequest.merge`, so a slow proxy gets one larger push rather than a backlog.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from meshpilot.model import Proxy, PushRequest
from meshpilot.xds.watch import WatchState

_ids = itertools.count(1)


@dataclass(eq=False)
class Connection:
    proxy: Proxy
    peer: str
    delta: bool
    id: str = ""
    connected_at: float = field(default_factory=time.time)
    watches: dict[str, WatchState] = field(default_factory=dict)
    events: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    """Requests read from the stream and PUSH markers, in arrival order."""
    pending: PushRequest | None = None
    targets_digest: tuple[object, ...] = ()
    """What the proxy itself serves at the last push; a change turns an EDS push into full."""
    pushes: int = 0

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{self.proxy.id}-{next(_ids)}"

    def enqueue(self, request: PushRequest) -> None:
        # One PUSH marker per pending request: later pushes merge into the waiting one.
        if self.pending is None:
            self.events.put_nowait(PUSH)
        self.pending = request.merge(self.pending)

    def take_pending(self) -> PushRequest | None:
        request, self.pending = self.pending, None
        return request


PUSH = object()
"""Marker in `Connection.events`: a push is pending."""
END = object()
"""Marker in `Connection.events`: the proxy closed its side of the stream."""
