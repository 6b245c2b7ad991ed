"""Builders shared by the data tests: images, dataset files and a loopback HTTP(S) server."""

from __future__ import annotations

import io
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


def png(colour: str = "red", size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, (str, bytes)) else json.dumps(r) for r in records]
    data = b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


# --- a loopback HTTP(S) server ---------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    drip_s: float = 0.0  # between body chunks of 1 KB
    content_length: bool = True


class LoopbackServer:
    """Serves `routes` on 127.0.0.1; `requests` records (path, Host header) of every request."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if ssl_context else "http"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: LoopbackServer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            server.requests.append((self.path, self.headers.get("Host", "")))
            route = server.routes.get(self.path, Route(404, b"not found"))
            time.sleep(route.delay_s)
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.content_length:
                self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            try:
                for start in range(0, len(route.body), 1024):
                    self.wfile.write(route.body[start : start + 1024])
                    self.wfile.flush()
                    time.sleep(route.drip_s)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (size cap, timeout): expected in these tests

        def log_message(self, *args):
            pass

    return Handler
