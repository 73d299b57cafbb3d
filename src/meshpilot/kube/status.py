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

It runs only where it should: with a leader elector, only while this replica leads (the duty
is cancelled the moment leadership is lost); it wakes on every change of the store (rejections
included), on every completed analysis, and every `resync` seconds regardless.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from meshpilot.analysis.message import Message
from meshpilot.analysis.server import rejected_message
from meshpilot.kube.client import KubeApiError, KubeClient, Object, Resource
from meshpilot.kube.leader import LeaderElector
from meshpilot.model import ConfigError, ConfigKey

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


class StatusWriter:
    def __init__(
        self,
        store: KubeConfigStore,
        analysis: ServerAnalysis | None = None,
        *,
        elector: LeaderElector | None = None,
        identity: str = "",
        resync: float = 30.0,
        settle: float = 0.2,
    ) -> None:
        self.store = store
        self.analysis = analysis
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
            key = ConfigKey(resource.kind, str(meta.get("namespace") or "default"),
                            str(meta.get("name") or ""))
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
