"""The mesh console: a web UI served by the discovery server (see console/server.py).

Kept free of imports so that the xDS layer can use `console.history` without pulling in the
web server.
"""
