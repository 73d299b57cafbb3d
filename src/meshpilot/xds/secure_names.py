"""Names the secure discovery port and its clients agree on (kept apart so the agent need not
import the server)."""

DISCOVERY_NAME = "istiod.istio-system.svc"
"""Istio's discovery address: a DNS SAN of the server certificate, checked by every client."""
DISCOVERY_NAMES = (DISCOVERY_NAME, "meshpilot.istio-system.svc", "localhost")
DEFAULT_SECURE_XDS_ADDRESS = "127.0.0.1:15012"
DEFAULT_CA_ADDRESS = "127.0.0.1:15013"
