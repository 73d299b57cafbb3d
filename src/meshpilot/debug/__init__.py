"""Introspection: debug HTTP endpoints that show what the server knows and sent."""
