"""Service registries: every source of services and endpoints behind one read interface."""
