"""Fields meshpilot accepts but does not apply are named, never dropped silently."""

from __future__ import annotations

import logging

import pytest

from meshpilot.config.store import Event
from meshpilot.config.support import UnsupportedFields, unsupported_fields
from meshpilot.model import Config, Kind


def vs(http: dict[str, object]) -> Config:
    return Config(Kind.VIRTUAL_SERVICE, "r", "default", {"hosts": ["r"], "http": [http]},
                  source_file="vs.yaml", source_line=3)


def test_applied_fields_pass() -> None:
    config = vs({"match": [{"headers": {"x-user": {"exact": "a"}}, "uri": {"prefix": "/"}}],
                 "route": [{"destination": {"host": "r", "subset": "v1"}, "weight": 100}],
                 "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 5}}},
                 "retries": {"attempts": 2}, "corsPolicy": {"allowOrigins": [{"exact": "a"}]}})
    assert unsupported_fields(config) == []


def test_unapplied_fields_are_named_with_their_path() -> None:
    config = vs({"redirect": {"uri": "/x", "derivePort": "FROM_REQUEST_PORT"},
                 "fault": {"delay": {"exponentialDelay": "1s"}}})
    assert unsupported_fields(config) == [
        "spec.http[0].redirect.derivePort", "spec.http[0].fault.delay.exponentialDelay",
    ]
    rule = Config(Kind.DESTINATION_RULE, "r", "default", {
        "host": "r",
        "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "5s"}}})
    assert unsupported_fields(rule) == ["spec.trafficPolicy.loadBalancer.warmupDurationSecs"]


def test_warned_once_per_version_and_forgotten_on_delete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="meshpilot.config")
    report = UnsupportedFields()
    config = vs({"redirect": {"derivePort": "FROM_REQUEST_PORT"}})
    report.on_config(None, config, Event.ADD)
    report.on_config(config, config, Event.UPDATE)
    assert [r.getMessage() for r in caplog.records] == [
        "vs.yaml:3: VirtualService default/r: spec.http[0].redirect.derivePort is not applied "
        "by meshpilot (field ignored)"
    ]
    assert report.by_config == {
        "VirtualService default/r": ["spec.http[0].redirect.derivePort"]
    }
    report.on_config(config, None, Event.DELETE)
    assert report.by_config == {}
