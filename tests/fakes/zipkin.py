"""A Zipkin collector stand-in: accepts spans the way Zipkin's v2 HTTP API does.

    python -m tests.fakes.zipkin --listen 127.0.0.1:9411

Reproduces: `POST /api/v2/spans` with a JSON list of spans (`application/json`, as
Envoy's Zipkin tracer sends with `HTTP_JSON`, chunked or not), answered `202 Accepted`;
`GET /api/v2/spans` here returns every span received so far (Zipkin's real GET takes a
service name; tests want all).
Zipkin itself is a Java server that cannot be installed on these machines.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_spans: list[dict[str, Any]] = []
_lock = threading.Lock()


class Collector(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b""  # Envoy streams the span report with chunked transfer encoding
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    def do_POST(self) -> None:
        body = self._body()
        try:
            spans = json.loads(body)
        except json.JSONDecodeError:
            self._send(400, b'{"error": "not JSON"}')
            return
        with _lock:
            _spans.extend(spans if isinstance(spans, list) else [spans])
        self._send(202, b"")

    def do_GET(self) -> None:
        with _lock:
            data = json.dumps(_spans).encode()
        self._send(200, data)

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    host, _, port = parser.parse_args().listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Collector)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
