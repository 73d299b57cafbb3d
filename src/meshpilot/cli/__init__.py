"""Command-line entry points; `main.app` is the `meshpilot` console script."""
