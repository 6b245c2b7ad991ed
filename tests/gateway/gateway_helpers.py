"""Running a gateway for tests: uvicorn in a thread of the test process (so the socket guard
of conftest.py sees every connection the gateway opens), API keys, images and an HTTP server
on loopback."""

from __future__ import annotations

import io
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import uvicorn
from PIL import Image

from gemlora.engine_token import engine_headers
from gemlora.serve.gateway import GatewaySettings, create_app

BASE = "tiny-gemma-3-mm"
DEFAULT_MAX_TOKENS = 8  # the test deployment's default, small so that tests run fast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayServer:
    """A gateway app served by uvicorn on 127.0.0.1:`port` in a daemon thread."""

    def __init__(self, settings: GatewaySettings, port: int) -> None:
        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)

    @property
    def gateway(self):
        return self.app.state.gateway

    def post(self, body, key: str | None = None, **kwargs) -> httpx.Response:
        """POST /v1/chat/completions with a raw body (bytes) or JSON (anything else)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) else body
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            content=content,
            json=json_body,
            headers=headers | kwargs.pop("headers", {}),
            timeout=120,
            **kwargs,
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def png(colour: str = "red", size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def resolver_for(table: dict[str, list[str]]):
    """A DNS resolver answering from `table` only."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    return resolve


@dataclass
class ImageServer:
    """Serves `images` (path -> bytes) over HTTP on 127.0.0.1; records each request's path."""

    images: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                body = owner.images.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# The language model of a Gemma3ForConditionalGeneration: where LoRA goes by default.
LANGUAGE_MODEL_TARGETS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


def save_tiny_adapter(base_dir, out, seed: int = 0):
    """A random (non-zero) LoRA r=4 on the tiny multimodal model's language model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(base_dir, dtype=torch.bfloat16)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_TARGETS, init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def engine_metric(engine_url: str, name: str) -> float:
    """The sum of a metric of vLLM's /metrics over its labels."""
    total = 0.0
    page = httpx.get(f"{engine_url}/metrics", headers=engine_headers(engine_url)).text
    for line in page.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
