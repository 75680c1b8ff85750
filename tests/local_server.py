"""A real HTTP server on 127.0.0.1 for tests of code that talks to endpoints (judges, downloads).

Only the loopback interface and an ephemeral port are used: tests never reach the network.

    class Handler(QuietHandler):
        def do_GET(self):
            self.send_body(b"...")

    with LocalServer(Handler) as server:
        fetch(server.root + "/file.json")
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing and has helpers for JSON bodies."""

    def log_message(self, *args: Any) -> None:
        pass

    def read_json(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_body(self, payload: bytes, status: int = 200, content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def send_chat_answer(self, content: str) -> None:
        """An OpenAI-style chat-completions response whose only message is ``content``."""
        body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        self.send_body(json.dumps(body).encode(), content_type="application/json")


class LocalServer:
    """``handler`` served on 127.0.0.1 at an ephemeral port from a daemon thread; ``root`` is its base URL."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def closed_port() -> int:
    """A loopback port on which nothing listens any more (for tests of unreachable endpoints)."""
    probe = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    return port
