"""vLLM's CPU build serves every local base through its OpenAI server (real engines, real
`openai` client), and the quantized base generates in vLLM exactly what it generates in
transformers."""

import base64
import io

import pytest
from openai import OpenAI
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.engine

# Plain-text prompts: the 270M is a base (not instruction-tuned) model, and on prompts it is
# unsure about, bf16 rounding differences between two correct implementations flip near-tied
# greedy choices.
PROMPTS = [
    "The capital of France is called",
    "Question: What is the capital of Italy?\nAnswer:",
    "Monday, Tuesday, Wednesday,",
]


def client(engine) -> OpenAI:
    return OpenAI(base_url=f"{engine.url}/v1", api_key=engine.token, max_retries=0, timeout=300)


def png_data_url(colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("base", ["gemma-3-270m", "gemma-3-270m-w4a16", "tiny-gemma-3-mm"])
def test_engine_answers_a_chat_request(engines, base):
    engine = engines.get(base)
    openai = client(engine)
    assert openai.models.list().data[0].id == base
    reply = openai.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens >= 1
    assert reply.choices[0].message.content


def test_multimodal_engine_answers_an_image_request(engines):
    engine = engines.get("tiny-gemma-3-mm")
    reply = client(engine).chat.completions.create(
        model="tiny-gemma-3-mm",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url("blue")}},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
        max_tokens=6,
        temperature=0,
    )
    text_only = client(engine).chat.completions.create(
        model="tiny-gemma-3-mm",
        messages=[{"role": "user", "content": "What colour is this?"}],
        max_tokens=1,
        temperature=0,
    )
    # The image reached the model: 4 image soft tokens plus <start/end_of_image> and the
    # processor's "\n\n" separators are in the prompt.
    assert reply.usage.prompt_tokens >= text_only.usage.prompt_tokens + 6
    assert reply.usage.completion_tokens >= 1


def vllm_greedy_ids(engine, model: str, prompt: str, n: int) -> list[int]:
    reply = client(engine).completions.create(
        model=model,
        prompt=prompt,
        max_tokens=n,
        temperature=0,
        logprobs=1,
        extra_body={"return_tokens_as_token_ids": True, "skip_special_tokens": False},
    )
    return [int(token.removeprefix("token_id:")) for token in reply.choices[0].logprobs.tokens]


def transformers_greedy_ids(model, tokenizer, prompt: str, n: int) -> list[int]:
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def test_w4a16_greedy_tokens_match_transformers(engines, built_models):
    """The session's engines run with `engine.dtype: auto`: vLLM is started with fp32 on a CPU
    without native bf16, bf16 elsewhere; transformers in the same precision gives the same
    greedy tokens."""
    from gemlora.precision import auto_precision, torch_dtype

    path = built_models["gemma-3-270m-w4a16"]
    engine = engines.get("gemma-3-270m-w4a16")
    assert engine.config.dtype == "auto"
    command = list(engine.process.args)
    expected = {"fp32": "float32", "bf16": "bfloat16"}[auto_precision()]
    assert command[command.index("--dtype") + 1] == expected
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype("auto"))
    for prompt in PROMPTS:
        ours = transformers_greedy_ids(model, tokenizer, prompt, 16)
        served = vllm_greedy_ids(engine, "gemma-3-270m-w4a16", prompt, 16)
        assert served == ours, (prompt, tokenizer.decode(served), tokenizer.decode(ours))


def test_engine_never_fetches_image_urls(engines):
    """Image URLs are the gateway's job (under its SSRF policy); the engine refuses them, even
    on loopback, without opening a connection."""
    import http.server
    import threading

    import openai

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_error(404)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/shape.png"
    try:
        with pytest.raises(openai.BadRequestError):
            client(engines.get("tiny-gemma-3-mm")).chat.completions.create(
                model="tiny-gemma-3-mm",
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
                max_tokens=1,
            )
    finally:
        server.shutdown()
    assert hits == []
