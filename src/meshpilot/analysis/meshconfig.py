"""The mesh configuration analyzers read: defined in `meshpilot.model.meshconfig`."""

from meshpilot.model.meshconfig import INGRESS_MODE_OFF, MeshConfig

__all__ = ["INGRESS_MODE_OFF", "MeshConfig"]
