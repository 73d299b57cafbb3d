"""The vocabulary every other layer speaks. Imports nothing else of meshpilot."""

from meshpilot.model.config import Config, ConfigError, ConfigKey, GroupVersionKind, Kind
from meshpilot.model.proxy import NodeType, Proxy
from meshpilot.model.push import PushRequest, TriggerReason
from meshpilot.model.service import (
    Endpoint,
    HealthStatus,
    Locality,
    Port,
    Protocol,
    Resolution,
    Service,
    ServiceLocation,
)

__all__ = [
    "Config",
    "ConfigError",
    "ConfigKey",
    "Endpoint",
    "GroupVersionKind",
    "HealthStatus",
    "Kind",
    "Locality",
    "NodeType",
    "Port",
    "Protocol",
    "Proxy",
    "PushRequest",
    "Resolution",
    "Service",
    "ServiceLocation",
    "TriggerReason",
]
