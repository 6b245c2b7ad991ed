"""`make demo`: the platform as it stands, end to end on this machine's CPU.

Builds the local bases (no-op when built), validates the sample style dataset, starts vLLM on
Gemma 3 270M and on the tiny multimodal model, and asks each a question with the official
`openai` client (the multimodal one about a picture). Stops what it started on exit.
"""

import base64
import io
import socket
import subprocess
import sys
import time

from openai import OpenAI
from PIL import Image

from gemlora.paths import REPO_ROOT
from serve.engine import EngineConfig, start_engine
from train.bases import build_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> None:
    step("building the local Gemma 3 bases (a no-op when built)")
    for name in ("gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm"):
        print(f"{name}: {build_model(name).path}")

    step("validating the sample style dataset")
    subprocess.run([sys.executable, "-m", "gemlora.cli", "data", "samples"], check=True)
    style = REPO_ROOT / "data/samples/style-chat/train.jsonl"
    subprocess.run(
        [sys.executable, "-m", "gemlora.cli", "data", "validate", str(style),
         "--model", "gemma-3-270m"],
        check=True,
    )  # fmt: skip

    for base, question in (
        ("gemma-3-270m", "Question: What is the capital of France?\nAnswer:"),
        ("tiny-gemma-3-mm", None),
    ):
        step(f"starting vLLM on {base} (1-3 minutes on 2 cores)")
        started = time.monotonic()
        engine = start_engine(EngineConfig(base=base, port=free_port()))
        print(f"ready in {time.monotonic() - started:.0f}s at {engine.url}/v1")
        try:
            ask(engine, base, question)
        finally:
            engine.stop()


def ask(engine, base: str, question: str | None) -> None:
    client = OpenAI(base_url=f"{engine.url}/v1", api_key="local")
    if question is not None:
        reply = client.completions.create(model=base, prompt=question, max_tokens=8, temperature=0)
        print(f"{base} <- {question!r}\n{base} -> {reply.choices[0].text!r}")
        return
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    reply = client.chat.completions.create(
        model=base,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
    )
    print(
        f"{base} saw the image ({reply.usage.prompt_tokens} prompt tokens) and replied "
        f"{reply.choices[0].message.content!r} (random weights: noise is expected)"
    )


if __name__ == "__main__":
    main()
