"""Status write-back: what meshpilot thinks of each Istio object, in the object's `status`.

For every object of a Kubernetes config source (`config.kube_source`) the writer computes the
status Istio's `istiod` writes with analysis enabled:

    status:
      observedGeneration: 3                 # the generation this status describes
      conditions:
      - type: Reconciled                    # "True": accepted, served by meshpilot
        status: "True"                      # "False", reason Rejected: validation refused it
        reason: Accepted                    #   (the last good version keeps serving)
        message: …
        lastTransitionTime: …               # kept while the condition's status holds
      validationMessages:                   # IST0106 for a rejected object, then the
      - type: {code: IST0101, name: …}      # analysis messages about it, as istioctl analyze
        level: ERROR                        # (`message`, the rendered text, is meshpilot's
        documentationUrl: https://istio.io/…#   addition to Istio's fields)
        message: …

and writes it through the `status` subresource (`PUT …/status` with the resourceVersion it
read; a 409 means the object changed meanwhile, and the change wakes the writer again) — only
when it differs from what the object already says, so its own writes (which come back as
watch events) settle after one round. Conditions other than Reconciled are left as found.

Gateway API objects get the Gateway API's own shape instead: a route (HTTPRoute, GRPCRoute,
TCPRoute) gets `status.parents` from the translation's conditions (`config/translating.py`,
the same ones `/debug/routestatus` shows), one entry per parent with our `controllerName`;
other controllers' entries are kept. Gateway API Gateways get nothing yet.

It runs only where it should: with a leader elector, only while this replica leads (the duty
is cancelled the moment leadership is lost); it wakes on every change of the store (rejections
included), on every completed analysis, and every `resync` seconds regardless.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from meshpilot.analysis.message import Message
from meshpilot.analysis.server import rejected_message
from meshpilot.debug.routestatus import CONTROLLER_NAME
from meshpilot.election import Elector
from meshpilot.kube.client import KubeApiError, KubeClient, Object, Resource
from meshpilot.model import ConfigError, ConfigKey
from meshpilot.model.config import key_kind

if TYPE_CHECKING:
    from meshpilot.analysis.server import ServerAnalysis
    from meshpilot.config.kube_source import KubeConfigStore

log = logging.getLogger("meshpilot.kube")

RECONCILED = "Reconciled"


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def validation_message(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": {"code": message.code, "name": message.type.name},
        "level": message.level.label.upper(),
        "message": message.text,
    }
    if message.type.documentation_url:
        entry["documentationUrl"] = message.type.documentation_url
    return entry


def desired_status(obj: Object, rejections: Sequence[ConfigError],
                   messages: Sequence[Message]) -> dict[str, Any]:
    """The status an object should carry, keeping what is not ours and stable timestamps."""
    current: dict[str, Any] = copy.deepcopy(obj.get("status") or {})
    previous = next((c for c in current.get("conditions") or []
                     if isinstance(c, dict) and c.get("type") == RECONCILED), None)
    if rejections:
        reasons = "; ".join(f"{e.field}: {e.message}" if e.field else e.message
                            for e in rejections)
        condition: dict[str, Any] = {"type": RECONCILED, "status": "False", "reason": "Rejected",
                     "message": f"rejected by validation, the last accepted version is "
                                f"served: {reasons}"}
    else:
        condition = {"type": RECONCILED, "status": "True", "reason": "Accepted",
                     "message": "accepted and served by meshpilot"}
    same = previous is not None and previous.get("status") == condition["status"]
    condition["lastTransitionTime"] = (previous or {}).get("lastTransitionTime") if same \
        else _timestamp()
    others = [c for c in current.get("conditions") or []
              if not (isinstance(c, dict) and c.get("type") == RECONCILED)]
    status = {k: v for k, v in current.items()
              if k not in ("conditions", "validationMessages", "observedGeneration")}
    status["conditions"] = [*others, condition]
    status["observedGeneration"] = int((obj.get("metadata") or {}).get("generation") or 0)
    found = [m for e in rejections if (m := rejected_message(e)) is not None]
    found += list(messages)
    if found:
        status["validationMessages"] = [validation_message(m) for m in found]
    return status


GATEWAY_API_GROUP = "gateway.networking.k8s.io"
ROUTE_KINDS = frozenset({"HTTPRoute", "GRPCRoute", "TCPRoute"})
RouteConditions = Mapping[str, Sequence[Mapping[str, str]]]
"""`Kind ns/name` → the translation's conditions, each naming its `parent` (TranslatingStore)."""


def route_parents_status(obj: Object, conditions: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """A Gateway API route's `status.parents`: one entry per parent the translation judged,
    with its parentRef as the route wrote it, our controllerName, and `Accepted` /
    `ResolvedRefs` carrying the route's generation. Entries of other controllers are theirs and
    kept; a condition's lastTransitionTime is kept while its status holds."""
    meta = obj.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    current: dict[str, Any] = copy.deepcopy(obj.get("status") or {})
    refs: dict[str, dict[str, Any]] = {}
    for ref in (obj.get("spec") or {}).get("parentRefs") or ():
        refs.setdefault(str(ref.get("name", "")), dict(ref))
    ours = [p for p in current.get("parents") or []
            if isinstance(p, dict) and p.get("controllerName") == CONTROLLER_NAME]
    before = {(json.dumps(p.get("parentRef"), sort_keys=True), c.get("type")): c
              for p in ours for c in p.get("conditions") or [] if isinstance(c, dict)}
    parents: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        ref = refs.get(condition["parent"]) or {"name": condition["parent"]}
        entry = parents.setdefault(condition["parent"], {
            "parentRef": ref, "controllerName": CONTROLLER_NAME, "conditions": []})
        new: dict[str, Any] = {"type": condition["type"], "status": condition["status"],
                               "reason": condition["reason"],
                               "message": condition.get("message", ""),
                               "observedGeneration": generation}
        old = before.get((json.dumps(ref, sort_keys=True), new["type"]))
        same = old is not None and old.get("status") == new["status"]
        new["lastTransitionTime"] = (old or {}).get("lastTransitionTime") if same \
            else _timestamp()
        entry["conditions"].append(new)
    others = [p for p in current.get("parents") or [] if p not in ours]
    return {**{k: v for k, v in current.items() if k != "parents"},
            "parents": [*others, *parents.values()]}


class StatusWriter:
    def __init__(
        self,
        store: KubeConfigStore,
        analysis: ServerAnalysis | None = None,
        *,
        elector: Elector | None = None,
        identity: str = "",
        resync: float = 30.0,
        settle: float = 0.2,
        routes: Callable[[], RouteConditions] | None = None,
    ) -> None:
        self.store = store
        self.analysis = analysis
        self.routes = routes
        """The translation's route conditions, written as Gateway API route status."""
        self.elector = elector
        self.identity = identity or (elector.identity if elector else "meshpilot")
        self.resync = resync
        self.settle = settle
        self.writes = 0
        self.conflicts = 0

    async def run(self) -> None:
        if self.elector is None:
            await self._duty()
        else:
            await self.elector.while_leading(self._duty)

    async def _duty(self) -> None:
        await self.store.wait_synced()
        client = await KubeClient.connect(self.store.options,
                                          f"meshpilot-discovery/{self.identity}")
        try:
            while True:
                self.store.changed.clear()
                runs = self.analysis.runs if self.analysis is not None else 0
                try:
                    await self.write_all(client)
                except OSError as error:
                    log.warning("status write-back paused: %s", error)
                await self._wait(runs)
                await asyncio.sleep(self.settle)  # let a burst of changes arrive first
        finally:
            await client.close()

    async def _wait(self, runs: int) -> None:
        waits: list[asyncio.Task[Any]] = [asyncio.create_task(self.store.changed.wait())]
        if self.analysis is not None:
            waits.append(asyncio.create_task(self.analysis.wait_for_run(runs + 1)))
        try:
            await asyncio.wait(waits, timeout=self.resync, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    def _messages(self, key: ConfigKey) -> list[Message]:
        report = self.analysis.report if self.analysis is not None else None
        if report is None:
            return []
        return list(report.by_resource.get(f"{key.kind} {key.namespace}/{key.name}", ()))

    async def write_all(self, client: KubeClient) -> int:
        """Write every status that differs from what is wanted; returns how many were written."""
        written = 0
        for resource, obj in self.store.objects():
            if self.elector is not None and not self.elector.is_leader:
                break  # leadership lost mid-round: the next leader takes over from here
            meta = obj.get("metadata") or {}
            key = ConfigKey(key_kind(resource.kind, resource.group),
                            str(meta.get("namespace") or "default"),
                            str(meta.get("name") or ""))
            if resource.group == GATEWAY_API_GROUP:
                # The Gateway API's own status shape only: its CRDs' schemas would prune
                # Istio's conditions, and the writer would rewrite them forever.
                found = (self.routes() if self.routes is not None else {}).get(
                    f"{key.kind} {key.namespace}/{key.name}")
                if resource.kind not in ROUTE_KINDS or found is None:
                    continue
                wanted = route_parents_status(obj, found)
            else:
                wanted = desired_status(obj, self.store.rejections(key), self._messages(key))
            if wanted == (obj.get("status") or {}):
                continue
            if await self._write(client, resource, obj, wanted):
                written += 1
        return written

    async def _write(self, client: KubeClient, resource: Resource, obj: Object,
                     status: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        body = {"apiVersion": obj.get("apiVersion") or resource.api_version,
                "kind": resource.kind,
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                             "resourceVersion": meta.get("resourceVersion")},
                "status": status}
        try:
            await client.replace_status(resource, body)
        except KubeApiError as error:
            if error.status == 409:
                # Changed since we read it: its watch event wakes us with the new version.
                self.conflicts += 1
                return False
            if error.status == 404:
                return False
            log.warning("status of %s %s/%s not written: %s", resource.kind,
                        meta.get("namespace"), meta["name"], error)
            return False
        self.writes += 1
        return True
