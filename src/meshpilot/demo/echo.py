"""A sample workload: answers every HTTP request with who it is and what it received.

    python -m meshpilot.demo.echo --listen 127.0.0.1:18081 --name reviews-v1

The JSON reply names the workload, so tests and people can see which backend served a request.
A few paths help observe the mesh from outside:

- `/status/<code>` answers with that status (to watch retries and outlier detection);
- `/delay/<seconds>` answers after sleeping (to watch timeouts);
- `/__requests` lists the requests received so far (method, path, host, headers), and
  `DELETE /__requests` forgets them (to count retries and see mirrored copies).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOG_PATH = "/__requests"


def make_handler(name: str) -> type[BaseHTTPRequestHandler]:
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body_in = self.rfile.read(length) if length else b""
            reply: dict[str, Any] = {
                "workload": name,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("host", ""),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body_in.decode(errors="replace"),
            }
            status = 200
            if self.path == LOG_PATH:
                with lock:
                    reply = {"workload": name, "requests": list(seen)}
                    if self.command == "DELETE":
                        seen.clear()
            else:
                with lock:
                    seen.append({k: reply[k] for k in ("method", "path", "host", "headers")})
                status = _status_for(self.path)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-workload", name)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _reply

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: one line per request drowns the demo's output

    return Echo


def _status_for(path: str) -> int:
    """`/status/503` → 503 and `/delay/1.5` → 200 after 1.5 s; anything else → 200."""
    parts = path.split("?")[0].strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "status" and parts[1].isdigit():
        return int(parts[1])
    if len(parts) >= 2 and parts[0] == "delay":
        time.sleep(min(float(parts[1]), 30.0))
    return 200


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port to listen on")
    parser.add_argument("--name", required=True, help="workload name to report")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), make_handler(args.name))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
