"""Leader election with a Lease, against the fake API server: acquire, renew, release on a
clean stop, take over after expiry when the leader dies, step down when renewals fail, and
never two leaders at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpilot.kube.client import KubeClient, KubeOptions
from meshpilot.kube.leader import LeaderElector
from tests.fakes.kube_api import KubeApiFake, running_api
from tests.registry_helpers import eventually

COORDINATION = "coordination.k8s.io/v1"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


class _Crashing(LeaderElector):
    """A replica that dies without releasing its Lease (as with SIGKILL)."""

    async def _release(self, client: KubeClient) -> None:
        return None


def elector(api: KubeApiFake, identity: str, cls: type[LeaderElector] = LeaderElector
            ) -> LeaderElector:
    return cls(KubeOptions(kubeconfig=api.kubeconfig), name="lock", namespace="istio-system",
               identity=identity, lease_duration=2.0, renew_deadline=1.5, retry_period=0.2)


def holder(api: KubeApiFake) -> str:
    lease = api.get(COORDINATION, "Lease", "istio-system", "lock")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


async def test_bad_durations_are_refused(api: KubeApiFake) -> None:
    with pytest.raises(ValueError):
        LeaderElector(KubeOptions(), name="x", lease_duration=2, renew_deadline=3)
    from_url = LeaderElector.from_url(
        f"kube://?kubeconfig={api.kubeconfig}&namespace=ns&name=n&identity=me&leaseDuration=6"
        "&renewDeadline=4&retryPeriod=1", "default")
    assert (from_url.namespace, from_url.name, from_url.identity, from_url.lease_duration) == (
        "ns", "n", "me", 6.0)


async def test_one_leader_renews_and_releases_on_a_clean_stop(api: KubeApiFake) -> None:
    first, second = elector(api, "a"), elector(api, "b")
    tasks = {e.identity: asyncio.create_task(e.run()) for e in (first, second)}
    both_seen = False

    async def watch_for_two_leaders() -> None:
        nonlocal both_seen
        while True:
            both_seen = both_seen or (first.is_leader and second.is_leader)
            await asyncio.sleep(0.01)

    monitor = asyncio.create_task(watch_for_two_leaders())
    try:
        leader = await eventually(lambda: next((e for e in (first, second) if e.is_leader),
                                               None), 5, "a leader")
        other = second if leader is first else first
        assert holder(api) == leader.identity
        renewals = len(api.writes_of("Lease", "update"))
        await eventually(lambda: len(api.writes_of("Lease", "update")) >= renewals + 3, 5,
                         "renewals")
        assert all(w.user_agent == leader.identity for w in api.writes_of("Lease", "update"))
        assert not other.is_leader and other.holder == leader.identity
        tasks[leader.identity].cancel()
        await asyncio.gather(tasks[leader.identity], return_exceptions=True)
        assert not leader.is_leader
        await eventually(lambda: other.is_leader, 5, "the other replica leading")
        lease = api.get(COORDINATION, "Lease", "istio-system", "lock")
        assert lease is not None and lease["spec"]["leaseTransitions"] >= 1
        assert not both_seen
    finally:
        monitor.cancel()
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_a_dead_leader_is_replaced_after_its_lease_expires(api: KubeApiFake) -> None:
    dying = elector(api, "dying", _Crashing)
    task = asyncio.create_task(dying.run())
    await eventually(lambda: dying.is_leader, 5, "the first leader")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert holder(api) == "dying"  # not released
    successor = elector(api, "successor")
    follow = asyncio.create_task(successor.run())
    try:
        await asyncio.sleep(0.5)
        assert not successor.is_leader  # the lease is still valid for a while
        await eventually(lambda: successor.is_leader, 10, "a takeover after expiry")
        assert holder(api) == "successor"
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)


async def test_a_leader_that_cannot_renew_steps_down(api: KubeApiFake) -> None:
    leader = elector(api, "alone")
    task = asyncio.create_task(leader.run())
    try:
        await eventually(lambda: leader.is_leader, 5, "leading")
        await api.stop()
        await eventually(lambda: not leader.is_leader, 10, "stepping down")
        await api.start()
        await eventually(lambda: leader.is_leader, 10, "leading again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_while_leading_runs_the_duty_only_while_leading(api: KubeApiFake) -> None:
    leader = elector(api, "x")
    started: list[float] = []
    cancelled: list[bool] = []

    async def duty() -> None:
        started.append(asyncio.get_running_loop().time())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    tasks = [asyncio.create_task(leader.run()), asyncio.create_task(leader.while_leading(duty))]
    try:
        await eventually(lambda: started, 5, "the duty started")
        await api.stop()
        await eventually(lambda: cancelled, 10, "the duty cancelled on losing the lease")
        await api.start()
        await eventually(lambda: len(started) == 2, 10, "the duty again")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
