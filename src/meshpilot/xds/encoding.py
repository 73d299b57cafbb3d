"""xDS responses written as bytes: resources encoded once, responses assembled by concatenation.

A protobuf message is the concatenation of its encoded fields, in any order, and a repeated
field is the concatenation of its encoded elements. So a `DiscoveryResponse` is

    version_info (1) + resources (2, one entry per resource) + type_url (4) + nonce (5)

and only the nonce differs between the responses that many identical proxies get. The encoded
`resources` entries are built once per resource (cached by type, name and content digest in the
snapshot's cache, which lives exactly as long as the resources it holds), and once per resource
*set* (`ResourceSet`, cached per generator result list, which generators share across proxies
with the same view). A push to a thousand identical proxies then costs one encoding plus a
thousand small concatenations, and grpc writes the bytes as they are (`serialize` passes bytes
through), instead of building and serializing a thousand response messages.

Delta responses are assembled the same way from encoded `Resource` entries.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from meshpilot.envoy.generators import Resource
from meshpilot.model.snapshot import Snapshot

# Nonces only need to be unique per stream and unguessable enough not to collide across server
# restarts: a random per-process prefix and a counter are as good as a uuid4, at a fraction of
# its cost (uuid4 showed up at 3% of push CPU).
_NONCE_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)


def nonce() -> str:
    return f"{_NONCE_PREFIX}{next(_counter):x}"


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, data: bytes) -> bytes:
    """One length-delimited field (wire type 2): a string, bytes or an embedded message."""
    return varint(number << 3 | 2) + varint(len(data)) + data


class Outgoing:
    """A response on its way to grpc, which keeps a reference to the last message a stream
    wrote until it writes the next: handing it this holder, emptied when serialized, keeps an
    idle stream from holding its last (often largest) response."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


def serialize(message: Any) -> bytes:
    """grpc response serializer: bytes as they are, messages serialized."""
    if isinstance(message, Outgoing):
        message, held = message.message, message
        held.message = None
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


def _sotw_entry(snapshot: Snapshot, resource: Resource) -> bytes:
    key = ("enc-sotw", resource.body.type_url, resource.name, resource.version)
    found: bytes | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = length_delimited(2, resource.body.SerializeToString())
    return found


def _delta_entry(snapshot: Snapshot, resource: Resource) -> bytes:
    key = ("enc-delta", resource.body.type_url, resource.name, resource.version)
    found: bytes | None = snapshot.cache.get(key)
    if found is None:
        entry = discovery_pb2.Resource(
            name=resource.name, version=resource.version, resource=resource.body
        )
        found = snapshot.cache[key] = length_delimited(2, entry.SerializeToString())
    return found


@dataclass(eq=False)
class ResourceSet:
    """One generator result with what every response built from it needs, computed once."""

    resources: Sequence[Resource]
    versions: dict[str, str]
    """Name → version. Shared by every watch that was sent this set: never mutate it."""
    _encoded: bytes | None = field(default=None, repr=False)

    def encoded(self, snapshot: Snapshot) -> bytes:
        """The `resources` field of a SotW response carrying all of them."""
        if self._encoded is None:
            self._encoded = b"".join(_sotw_entry(snapshot, r) for r in self.resources)
        return self._encoded


def resource_set(snapshot: Snapshot, resources: list[Resource]) -> ResourceSet:
    """The set for a generator result. Generators hand proxies that see the same thing the same
    list object, so the set is looked up by the list's identity (kept alive in the entry, so
    the id cannot be reused while the snapshot lives)."""
    key = ("resource-set", id(resources))
    found: tuple[list[Resource], ResourceSet] | None = snapshot.cache.get(key)
    if found is not None and found[0] is resources:
        return found[1]
    made = ResourceSet(resources, {r.name: r.version for r in resources})
    snapshot.cache[key] = (resources, made)
    return made


def changed_resources(
    snapshot: Snapshot, held: dict[str, str], target: ResourceSet
) -> list[Resource]:
    """The resources of `target` whose version differs from `held` (name → version a proxy
    holds). Proxies that held the same set and now get the same set share one answer, found by
    the two dicts' identities (both kept alive in the entry, so the ids cannot be reused)."""
    key = ("changed", id(held), id(target))
    found: tuple[dict[str, str], ResourceSet, list[Resource]] | None = snapshot.cache.get(key)
    if found is not None and found[0] is held and found[1] is target:
        return found[2]
    changed = [r for r in target.resources if held.get(r.name) != r.version]
    snapshot.cache[key] = (held, target, changed)
    return changed


def sotw_response(
    snapshot: Snapshot, type_url: str, version: str, resources: Iterable[Resource] | ResourceSet
) -> tuple[bytes, str]:
    """A serialized DiscoveryResponse and its nonce."""
    body = (
        resources.encoded(snapshot)
        if isinstance(resources, ResourceSet)
        else b"".join(_sotw_entry(snapshot, r) for r in resources)
    )
    sent = nonce()
    data = b"".join((
        length_delimited(1, version.encode()),
        body,
        length_delimited(4, type_url.encode()),
        length_delimited(5, sent.encode()),
    ))
    return data, sent


def shared_sotw_response(
    snapshot: Snapshot, type_url: str, version: str, resources: list[Resource] | ResourceSet
) -> tuple[bytes, str]:
    """A pushed response that every stream pushed the same resources gets as one bytes object,
    nonce included: copying a 900 KiB response per proxy to append a nonce of its own was a
    third of a full push's CPU. A nonce need only be unique within a stream: a push sends a
    stream only what changed for it, answers to requests take fresh nonces, and the cache
    lives one snapshot, so a stream meets a shared nonce again only if pushed the very same
    response twice in one snapshot, when an ACK of either means the same. `resources` must
    be an object those streams share (a generator's list, a ResourceSet, a
    `changed_resources` answer): it is cached by identity."""
    return _shared(snapshot, ("push-response", type_url, id(resources)), resources,
                   lambda: sotw_response(snapshot, type_url, version, resources))


def shared_delta_response(
    snapshot: Snapshot, type_url: str, version: str, changed: list[Resource], removed: list[str]
) -> tuple[bytes, str]:
    """`delta_response` shared by the streams pushed the same `changed` and `removed` lists
    (objects those streams share), as `shared_sotw_response` is for SotW."""
    return _shared(snapshot, ("push-delta", type_url, id(changed), id(removed)),
                   (changed, removed),
                   lambda: delta_response(snapshot, type_url, version, changed, removed))


def _shared(
    snapshot: Snapshot, key: tuple[object, ...], source: object,
    build: Callable[[], tuple[bytes, str]],
) -> tuple[bytes, str]:
    found: tuple[object, bytes | None, str] | None = snapshot.cache.get(key)
    if found is None or not _same(found[0], source):
        # Kept only from a second stream on: a set one proxy alone gets (an EnvoyFilter's
        # patched copy, say) must not keep its response alive for the snapshot's lifetime.
        snapshot.cache[key] = (source, None, "")
        return build()
    if found[1] is not None:
        return found[1], found[2]
    data, sent = build()
    snapshot.cache[key] = (source, data, sent)
    return data, sent


def _same(kept: object, source: object) -> bool:
    """Whether the cache entry was made for these very objects (ids are only unique while
    the objects live, and the entry keeps them alive)."""
    if isinstance(source, tuple) and isinstance(kept, tuple):
        return len(kept) == len(source) and all(a is b for a, b in zip(kept, source, strict=True))
    return kept is source


def delta_response(
    snapshot: Snapshot,
    type_url: str,
    version: str,
    changed: Iterable[Resource],
    removed: Iterable[str],
) -> tuple[bytes, str]:
    """A serialized DeltaDiscoveryResponse and its nonce."""
    sent = nonce()
    data = b"".join((
        length_delimited(1, version.encode()),
        *(_delta_entry(snapshot, r) for r in changed),
        length_delimited(4, type_url.encode()),
        length_delimited(5, sent.encode()),
        *(length_delimited(6, name.encode()) for name in removed),
    ))
    return data, sent
