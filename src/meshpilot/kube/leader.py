"""Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does.

Every replica runs an elector with its own identity on the same Lease. Each `retryPeriod` it
reads the Lease and

- creates it, holding it, when there is none (a 409 AlreadyExists means another replica was
  faster);
- takes it over when it is free (no holder: the last leader released it on shutdown) or
  expired: the record has not changed for `leaseDuration` seconds *as observed on this
  replica's own monotonic clock* — the holder's timestamps are never compared with the local
  wall clock, so clock skew between machines cannot make two leaders;
- renews it when it already holds it (a new `renewTime`);

every write carrying the `resourceVersion` that was read, so of two replicas racing for an
expired Lease exactly one wins and the other gets 409 Conflict. A leader that cannot renew
for `renewDeadline` seconds (shorter than `leaseDuration`) stops leading before anyone else
may take over; a leader that stops cleanly releases the Lease (empty holder), so a successor
takes over at its next retry instead of waiting for the expiry.

Duties that must happen once (status write-back, registry-sync writes) wait for `leading`
and check `is_leader` before each write. Address: `kube://?kubeconfig=PATH&namespace=NS&
name=LEASE&leaseDuration=15&renewDeadline=10&retryPeriod=2&identity=ID` (client-go's and
Istio's default durations; the identity defaults to `$POD_NAME`, else host name and pid).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from meshpilot.election import run_while_leading
from meshpilot.kube.client import (
    LEASES,
    KubeApiError,
    KubeClient,
    KubeOptions,
    Object,
    sleep_jitter,
)

log = logging.getLogger("meshpilot.kube")


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def micro_time(when: float | None = None) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds."""
    moment = datetime.datetime.fromtimestamp(time.time() if when is None else when,
                                             datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        options: KubeOptions,
        *,
        name: str,
        namespace: str = "default",
        identity: str = "",
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        connect: Callable[[KubeOptions, str], Awaitable[KubeClient]] = KubeClient.connect,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError(f"{options.text}: need retryPeriod < renewDeadline < "
                             f"leaseDuration, got {retry_period}, {renew_deadline}, "
                             f"{lease_duration}")
        self.options = options
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._connect = connect
        self.is_leader = False
        self.holder = ""
        """The holder as last observed (this replica's identity while it leads)."""
        self.transitions = 0
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._changed = asyncio.Condition()

    @classmethod
    def from_url(cls, text: str, default_name: str) -> LeaderElector:
        options = KubeOptions.from_url(text)
        return cls(
            options,
            name=options.param("name") or default_name,
            namespace=options.param("namespace") or "default",
            identity=options.param("identity"),
            lease_duration=options.seconds("leaseDuration", 15.0),
            renew_deadline=options.seconds("renewDeadline", 10.0),
            retry_period=options.seconds("retryPeriod", 2.0),
        )

    # For the duties --------------------------------------------------------------------------

    async def wait_for(self, leading: bool) -> None:
        """Return once this replica leads (`True`) or does not (`False`)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.is_leader == leading)

    async def while_leading(self, duty: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `duty` whenever this replica leads; cancel it as soon as it stops leading."""
        await run_while_leading(self, duty, f"leader-duty-{self.name}")

    def status(self) -> dict[str, Any]:
        return {"lease": f"{self.namespace}/{self.name}", "identity": self.identity,
                "leader": self.is_leader, "holder": self.holder,
                "transitions": self.transitions}

    # The election ------------------------------------------------------------------------------

    async def run(self) -> None:
        client: KubeClient | None = None
        try:
            while True:
                try:
                    if client is None:
                        client = await self._connect(self.options, self.identity)
                    renewed = await self._try_acquire_or_renew(client)
                except (OSError, KubeApiError) as error:
                    log.debug("lease %s/%s: %s", self.namespace, self.name, error)
                    renewed = False
                    if isinstance(error, OSError) and client is not None:
                        await client.close()
                        client = None
                now = time.monotonic()
                if renewed:
                    self._renewed_at = now
                    await self._set_leader(True)
                elif self.is_leader and now - self._renewed_at >= self.renew_deadline:
                    log.warning("lease %s/%s: could not renew for %.1f s; no longer leading",
                                self.namespace, self.name, now - self._renewed_at)
                    await self._set_leader(False)
                await sleep_jitter(self.retry_period)
        finally:
            if client is not None:
                if self.is_leader:
                    await self._release(client)
                await client.close()
            await self._set_leader(False)

    async def _set_leader(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        log.info("lease %s/%s: %s is %s", self.namespace, self.name, self.identity,
                 "now leading" if leading else "no longer leading")
        async with self._changed:
            self.is_leader = leading
            self._changed.notify_all()

    async def _try_acquire_or_renew(self, client: KubeClient) -> bool:
        now = time.time()
        lease = await client.get(LEASES, self.namespace, self.name)
        if lease is None:
            spec = self._spec(now, acquire=True, transitions=0)
            try:
                await client.create(LEASES, {
                    "apiVersion": LEASES.api_version, "kind": LEASES.kind,
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec})
            except KubeApiError as error:
                if error.status == 409:
                    return False
                raise
            self._observe(spec)
            return True
        record: dict[str, Any] = dict(lease.get("spec") or {})
        self._observe(record)
        holder = str(record.get("holderIdentity") or "")
        self.holder = holder
        mine = holder == self.identity
        expired = time.monotonic() - self._observed_at > float(
            record.get("leaseDurationSeconds") or self.lease_duration)
        if holder and not mine and not expired:
            return False
        transitions = int(record.get("leaseTransitions") or 0) + (0 if mine else 1)
        spec = self._spec(now, acquire=not mine, transitions=transitions)
        if mine:
            spec["acquireTime"] = record.get("acquireTime") or spec["acquireTime"]
        updated = _with_spec(lease, spec)
        try:
            result = await client.replace(LEASES, updated)
        except KubeApiError as error:
            if error.status == 409:  # another replica wrote first: read again next round
                return False
            raise
        if not mine:
            log.info("lease %s/%s: %s acquired it (previous holder %r)", self.namespace,
                     self.name, self.identity, holder)
        self.transitions = transitions
        self._observe(dict(result.get("spec") or spec))
        self.holder = self.identity
        return True

    def _spec(self, now: float, *, acquire: bool, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    def _observe(self, record: dict[str, Any]) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    async def _release(self, client: KubeClient) -> None:
        """Give the Lease up on shutdown so a successor need not wait for it to expire."""
        try:
            lease = await client.get(LEASES, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1,
                    "renewTime": micro_time()}
            await client.replace(LEASES, _with_spec(lease, spec))
            log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
        except (OSError, KubeApiError) as error:
            log.warning("lease %s/%s: could not release (%s); it expires on its own",
                        self.namespace, self.name, error)


def _with_spec(lease: Object, spec: dict[str, Any]) -> Object:
    metadata = {k: v for k, v in (lease.get("metadata") or {}).items() if k != "managedFields"}
    return {"apiVersion": LEASES.api_version, "kind": LEASES.kind, "metadata": metadata,
            "spec": spec}
