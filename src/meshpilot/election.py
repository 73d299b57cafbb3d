"""What duties that must happen once need from a leader elector, whatever it is built on: a
Kubernetes Lease (`kube.leader`) or an etcd lease (`etcd.leader`)."""

from __future__ import annotations

import asyncio
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


Duty = Callable[[], Coroutine[Any, Any, None]]


async def run_while_leading(elector: Elector, duty: Duty, name: str) -> None:
    """The one `while_leading` of every elector: start `duty` on winning, cancel it on losing,
    and start it again on the next win."""
    while True:
        await elector.wait_for(True)
        task: asyncio.Task[None] = asyncio.create_task(duty(), name=name)
        lost = asyncio.create_task(elector.wait_for(False))
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not elector.is_leader:
                continue
            raise
