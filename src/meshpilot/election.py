"""What duties that must happen once need from a leader elector, whatever it is built on: a
Kubernetes Lease (`kube.leader`) or an etcd lease (`etcd.leader`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol


class Elector(Protocol):
    identity: str
    is_leader: bool
    holder: str

    async def run(self) -> None:
        """Take part in the election until cancelled (releasing leadership on the way out)."""
        ...

    async def wait_for(self, leading: bool) -> None: ...

    async def while_leading(self, duty: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `duty` whenever this replica leads; cancel it as soon as it stops leading."""
        ...

    def status(self) -> dict[str, Any]: ...
