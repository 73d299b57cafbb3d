"""Leader election on an etcd key held under a lease, as etcd's own `concurrency.Election`.

    etcd://HOST:PORT[,…]?key=/meshpilot/leader&identity=ID&leaseDuration=15&renewDeadline=10&
        retryPeriod=2

Every replica grants itself a lease of `leaseDuration` seconds and, each `retryPeriod`, runs one
transaction on the key: *if the key does not exist* (create revision 0) put our identity under
our lease, *else* read it. The transaction is atomic, so of several replicas racing for a free
key exactly one creates it. The holder keeps its lease alive (LeaseKeepAlive) every
`retryPeriod`; it leads while the key holds its identity under its lease.

Expiry is judged by the etcd server alone: when the holder stops renewing (killed, cut off),
etcd revokes its lease when the TTL runs out and deletes the key with it. Followers watch the
key, so its deletion wakes them at once instead of at their next retry. The holder stops
leading when it could not renew for `renewDeadline` seconds (measured from *before* the last
successful keep-alive was sent, and shorter than the TTL), so it has stopped before etcd can let
anyone else in; it stops at once when it reads the key held by someone else or its lease gone.
A leader that stops cleanly revokes its lease, which deletes the key: a successor takes over
within one watch event.

The interface is that of `kube.leader.LeaderElector` (`run`, `is_leader`, `wait_for`,
`while_leading`, `status`; see `election.Elector`), so duties do not care which one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aetcd import rpc

from meshpilot.election import run_while_leading
from meshpilot.etcd.client import ERRORS, EtcdAddress, describe
from meshpilot.kube.leader import default_identity

log = logging.getLogger("meshpilot.etcd")


class EtcdLeaderElector:
    def __init__(
        self,
        address: EtcdAddress,
        *,
        key: str,
        identity: str = "",
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError(f"{address.name}: need retryPeriod < renewDeadline < "
                             f"leaseDuration, got {retry_period}, {renew_deadline}, "
                             f"{lease_duration}")
        self.address = address
        self.key = key
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.is_leader = False
        self.holder = ""
        self.transitions = 0
        self.lease_id = 0
        self._attempt = 0
        self._renewed_at = 0.0
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()

    @classmethod
    def from_url(cls, text: str, default_key: str) -> EtcdLeaderElector:
        address = EtcdAddress.parse(text)
        return cls(
            address,
            key=address.param("key") or default_key,
            identity=address.param("identity"),
            lease_duration=address.seconds("leaseDuration", 15.0),
            renew_deadline=address.seconds("renewDeadline", 10.0),
            retry_period=address.seconds("retryPeriod", 2.0),
        )

    # For the duties --------------------------------------------------------------------------

    async def wait_for(self, leading: bool) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.is_leader == leading)

    async def while_leading(self, duty: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `duty` whenever this replica leads; cancel it as soon as it stops leading."""
        await run_while_leading(self, duty, f"leader-duty-{self.key}")

    def status(self) -> dict[str, Any]:
        return {"lease": f"{self.address.name}{self.key}", "identity": self.identity,
                "leader": self.is_leader, "holder": self.holder,
                "transitions": self.transitions}

    # The election ------------------------------------------------------------------------------

    async def run(self) -> None:
        client: Any = None
        watcher: asyncio.Task[None] | None = None
        try:
            while True:
                self._wake.clear()
                started = time.monotonic()
                try:
                    if client is None:
                        client = self.address.client(self._attempt)
                        self._attempt += 1
                        await client.connect()
                        watcher = asyncio.create_task(self._watch(client))
                    leading = await self._round(client)
                except ERRORS as error:
                    log.debug("leader key %s: %s", self.key, describe(error))
                    leading = None
                    if watcher is not None:
                        watcher.cancel()
                    if client is not None:
                        await client.close()
                    client = watcher = None
                if leading:
                    self._renewed_at = started
                    await self._set_leader(True)
                elif leading is False:
                    await self._set_leader(False)  # someone else holds the key: stop at once
                elif self.is_leader and time.monotonic() - self._renewed_at >= \
                        self.renew_deadline:
                    log.warning("leader key %s: could not renew for %.1f s; no longer leading",
                                self.key, time.monotonic() - self._renewed_at)
                    await self._set_leader(False)
                pause = self.retry_period * random.uniform(0.8, 1.0)
                if self.is_leader and self._renewed_at:
                    # Never sleep past the renew deadline without another attempt.
                    pause = min(pause, max(self._renewed_at + self.renew_deadline
                                           - time.monotonic(), 0.05))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
        finally:
            if watcher is not None:
                watcher.cancel()
            if client is not None:
                await self._release(client)
                await client.close()
            await self._set_leader(False)

    async def _round(self, client: Any) -> bool:
        """Acquire or renew; True while this replica holds the key."""
        if self.lease_id:
            reply = await client.refresh_lease(self.lease_id)
            if reply is None or reply.TTL <= 0:
                self.lease_id = 0  # expired on the server: whatever we held is gone
        if not self.lease_id:
            lease = await client.lease(max(1, math.ceil(self.lease_duration)))
            self.lease_id = int(lease.id)
        key = self.key.encode()
        response = await client.kvstub.Txn(rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.CREATE,
                                 result=rpc.Compare.EQUAL, create_revision=0)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(
                key=key, value=self.identity.encode(), lease=self.lease_id))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        ), timeout=self.address.seconds("timeout", 5.0), metadata=client.metadata)
        if response.succeeded:
            self.transitions += 1
            self.holder = self.identity
            log.info("leader key %s: acquired by %s", self.key, self.identity)
            return True
        kvs = response.responses[0].response_range.kvs
        if not kvs:
            self.holder = ""
            return False  # deleted between compare and read: next round
        self.holder = kvs[0].value.decode(errors="replace")
        return bool(kvs[0].lease == self.lease_id and self.holder == self.identity)

    async def _watch(self, client: Any) -> None:
        """Wake the election loop when the key is deleted (a lease expired or was revoked)."""
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=self.key.encode()))
            await stop.wait()

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
        try:
            async for response in call:
                if any(e.type == rpc.Event.DELETE for e in response.events):
                    self._wake.set()
        except ERRORS as error:
            log.debug("leader key %s: watch ended: %s", self.key, describe(error))
        finally:
            stop.set()
            call.cancel()

    async def _set_leader(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        log.info("leader key %s: %s is %s", self.key, self.identity,
                 "now leading" if leading else "no longer leading")
        async with self._changed:
            self.is_leader = leading
            self._changed.notify_all()

    async def _release(self, client: Any) -> None:
        """Revoke our lease on shutdown: etcd deletes the key, and a follower takes over now."""
        if not self.lease_id:
            return
        try:
            await asyncio.wait_for(client.revoke_lease(self.lease_id), 3.0)
            if self.is_leader:
                log.info("leader key %s: released by %s", self.key, self.identity)
        except (*ERRORS, TimeoutError) as error:
            log.warning("leader key %s: could not revoke the lease (%s); it expires on its own",
                        self.key, error)
        self.lease_id = 0
