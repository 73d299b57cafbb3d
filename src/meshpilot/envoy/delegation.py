"""VirtualService delegation: a root VirtualService hands some of its http routes to another.

A root route `{match: [...], delegate: {name, namespace}}` is replaced by the delegate's http
routes, each match of which is combined with each of the root route's matches. As in Istio the
delegate may only narrow what the root matches: a delegate uri must lie within the root's
(prefix inside prefix, exact inside prefix, or the same condition), and any header, query
parameter, method, authority, scheme or port both set must be equal. A combination that
conflicts matches nothing and is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from meshpilot.envoy.scope import exported_to
from meshpilot.model import Config
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

Match = Mapping[str, Any]

_EQUAL_FIELDS = ("scheme", "method", "authority", "port", "ignoreUriCase", "sourceNamespace")
_MAP_FIELDS = ("headers", "withoutHeaders", "queryParams", "sourceLabels")


def find_delegate(snapshot: Snapshot, root: Config, reference: Mapping[str, Any]) -> Config | None:
    """The host-less VirtualService a root route names, if it is exported to the root."""
    name = str(reference.get("name", ""))
    namespace = str(reference.get("namespace") or root.namespace)
    for vs in snapshot.virtual_services:
        if (vs.name, vs.namespace) == (name, namespace) and not vs.spec.get("hosts") \
                and exported_to(vs.spec.get("exportTo") or (), vs.namespace, root.namespace):
            return vs
    log.warning("%s delegates to %s/%s, which is not a delegate VirtualService visible to it",
                root.key, namespace, name)
    return None


def delegated_routes(
    root_http: Mapping[str, Any], delegate: Config
) -> Iterator[tuple[Mapping[str, Any], Match | None]]:
    """(delegate http route, merged match) for every combination that can match."""
    root_matches: list[Match | None] = list(root_http.get("match") or [None])
    for http in delegate.spec.get("http") or ():
        for own in http.get("match") or [None]:
            for root in root_matches:
                try:
                    yield http, merge_match(root, own)
                except Conflict:
                    continue


class Conflict(ValueError):
    """A delegate match that asks for something its root match excludes."""


def merge_match(root: Match | None, own: Match | None) -> Match | None:
    """The combined match (None matches everything); raises Conflict when none can match."""
    if root is None:
        return own
    if own is None:
        return root
    merged = dict(own)
    uri = _merge_uri(root.get("uri"), own.get("uri"))
    if uri is not None:
        merged["uri"] = uri
    for field in _EQUAL_FIELDS:
        if field in root:
            if field in own and own[field] != root[field]:
                raise Conflict(field)
            merged[field] = root[field]
    for field in _MAP_FIELDS:
        mine: Mapping[str, Any] = own.get(field) or {}
        theirs: Mapping[str, Any] = root.get(field) or {}
        if any(k in mine and mine[k] != v for k, v in theirs.items()):
            raise Conflict(field)
        if theirs:
            merged[field] = {**theirs, **mine}
    if "gateways" in root:
        merged["gateways"] = root["gateways"]
    return merged


def _merge_uri(root: Match | None, own: Match | None) -> Match | None:
    if root is None:
        return own
    if own is None or own == root:
        return root
    if "prefix" in root:
        prefix = str(root["prefix"])
        for kind in ("prefix", "exact"):
            if kind in own and str(own[kind]).startswith(prefix):
                return own
    raise Conflict("uri")
