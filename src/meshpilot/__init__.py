"""meshpilot: a service-mesh control plane speaking Istio's config API.

Data flows one way:

    config sources ─► config store ─┐
                                    ├─► Snapshot ─► envoy generators ─► xDS streams ─► Envoy
    service registries ─► aggregate ┘      ▲
               change events ─► debounce ──┘
"""

__version__ = "0.1.0"
