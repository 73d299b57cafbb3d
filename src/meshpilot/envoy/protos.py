"""Small helpers for building Envoy protos."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message


def pack(message: Message) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def parse_duration(text: str) -> duration_pb2.Duration:
    """Istio writes durations as protobuf JSON does: `1.5s`, `300ms`, `1m`, `2h`."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return duration(float(text[: -len(suffix)]) * units[suffix])
    raise ValueError(f"not a duration: {text!r}")


def ads_source() -> Any:
    source = config_source_pb2.ConfigSource()
    source.ads.SetInParent()
    source.resource_api_version = config_source_pb2.V3
    return source
