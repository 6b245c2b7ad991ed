"""`make demo`: the whole platform on this machine's CPU, in one command.

1. build the Gemma 3 270M bases the demo serves (a no-op once built; the W4A16 one quantized
   round-to-nearest when the demo builds it, in seconds);
2. validate the sample style dataset: every answer opens "Ahoy!" and signs off "— Captain Gem";
3. start MLflow (SQLite), vLLM on Gemma 3 270M W4A16 and the gateway in the background:
   `gemlora serve configs/serve/demo.yaml`;
4. with the official `openai` client, upload the dataset and launch a fine-tuning job through
   the gateway, and follow its events while it trains;
   the job verifies the new version on the engine, then its eval gate: the base and the
   adapter answer the held-out questions, graders measure the style (the greeting, the
   signature, closeness to the reference answer), and `champion` moves to the adapter only if
   it is better on the signature with a paired bootstrap interval above 0;
5. the gate's table (means, difference, interval, wins/ties/losses) and a few answers side by
   side;
6. print where to look next: the gateway, the MLflow runs, the registered adapter.

The services keep running for you to explore; `make demo-stop` stops them.
"""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from openai import OpenAI
from rich.console import Console
from rich.table import Table

from gemlora.paths import REPO_ROOT, gemlora_home
from gemlora.serve.config import load_serve_config
from gemlora.train.bases import build_model

CONFIG = REPO_ROOT / "configs/serve/demo.yaml"
STYLE = REPO_ROOT / "data/samples/style-chat"
PID_FILE = gemlora_home() / "run" / "demo-serve.pid"
LOG_FILE = gemlora_home() / "logs" / "demo-serve.log"
GEMLORA = [sys.executable, "-m", "gemlora.cli"]

# What the style is: graders in OpenAI's format, run by the job's eval gate.
STYLE_GRADERS = [
    {"type": "string_check", "name": "greeting", "input": "{{sample.output_text}}",
     "reference": "Ahoy", "operation": "like"},
    {"type": "string_check", "name": "signed", "input": "{{sample.output_text}}",
     "reference": "Captain Gem", "operation": "like"},
    {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
     "reference": "{{item.reference}}", "evaluation_metric": "rouge_l"},
]  # fmt: skip

# The fine-tune: 20 steps of LoRA on the W4A16 base (trained unpacked, in fp32 on a CPU
# without native bf16), the learning rate 5 x gemlora's default 2e-4; then the eval gate.
JOB = {
    "model": "gemma-3-270m-w4a16",
    "hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 5},
    "suffix": "captain-gem",
    "extra_body": {
        "gemlora": {
            "lora": {"r": 16, "alpha": 32},
            "training": {"max_steps": 20, "save_steps": 10},
            "eval": {"generation_examples": 0, "max_new_tokens": 32, "graders": STYLE_GRADERS},
            # The final version is verified (its checkpoints are callable too; `gemlora
            # adapters verify NAME/N` checks one), then gated against the base.
            "output": {
                "verify": {"checkpoints": False},
                "promote_if": {"gate": {"grader": "signed"}, "to": "champion"},
            },
        }
    },
}
QUESTIONS = 3  # held-out questions asked of the base and the adapter
QUANTIZED_QUICKLY = (
    "\n  quantized round-to-nearest for a quick start; calibrate it with GPTQ (~1.5 min): "
    "gemlora models build gemma-3-270m-w4a16 --method gptq"
)

console = Console(highlight=False, soft_wrap=True)
started = time.monotonic()


def step(title: str) -> None:
    console.print(f"\n[bold cyan]==> {title}[/]  [dim]({time.monotonic() - started:.0f} s)[/]")


def main() -> None:
    config = load_serve_config(CONFIG)
    gateway_url = f"http://{config.gateway.host}:{config.gateway.port}"
    mlflow_url = config.registry.tracking_uri

    step("building the Gemma 3 270M bases (a no-op once built; ~1 minute the first time)")
    for name in ("gemma-3-270m", "gemma-3-270m-w4a16"):
        # Round-to-nearest 4-bit when the demo builds it (seconds); a base already built, e.g.
        # GPTQ-calibrated by `make models`, is kept.
        built = build_model(name, new_method="rtn")
        console.print(
            f"{name}: {built.path}{QUANTIZED_QUICKLY if built.built and 'w4a16' in name else ''}"
        )

    step(f"starting MLflow, vLLM and the gateway: gemlora serve {CONFIG.relative_to(REPO_ROOT)}")
    process = start_services(gateway_url)

    step("validating the sample style dataset (while vLLM starts)")
    subprocess.run([*GEMLORA, "data", "samples"], check=True)
    subprocess.run(
        [*GEMLORA, "data", "validate", str(STYLE / "train.jsonl"), "--model", JOB["model"]],
        check=True,
    )
    wait_for_services(gateway_url, process)

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key="demo")  # auth is off on loopback
    step("uploading the dataset through the Files API")
    train = upload(client, "train.jsonl")
    held_out = upload(client, "eval.jsonl")

    step(f"fine-tuning {JOB['model']} through the Fine-tuning Jobs API")
    job = client.fine_tuning.jobs.create(training_file=train.id, validation_file=held_out.id, **JOB)
    console.print(f"job {job.id}: {job.status}")
    job = follow(client, job.id)
    if job.status != "succeeded":
        console.print(f"[red]the job {job.status}: {job.error}[/]")
        sys.exit(1)

    step("the eval gate: the adapter against the base on the held-out questions")
    gate = gate_table(gateway_url, job.fine_tuned_model)
    step(f"the base and the adapter {job.fine_tuned_model!r}, same questions, greedy")
    compare(client, base=config.engine.base, adapter=job.fine_tuned_model)

    step("done: everything keeps running")
    mlflow = job.integrations[0].mlflow
    console.print(f"gateway (OpenAI API):  {gateway_url}/v1   models: {gateway_url}/v1/models")
    console.print(f"MLflow UI:             {mlflow_url}")
    console.print(f"  the training run:    {mlflow['run_url']}")
    eval_run = f"{mlflow['run_url'].rsplit('/', 1)[0]}/{gate['mlflow_run_id']}"
    console.print(f"  the gate's eval:     {eval_run} (its model runs: traces, assessments)")
    console.print(f"  the adapter:         {mlflow['registered_model_url']}")
    console.print(f"call it yourself:      curl {gateway_url}/v1/chat/completions "
                  f"-H 'Content-Type: application/json' -d '{{\"model\": "
                  f"\"{job.fine_tuned_model}\", \"messages\": [{{\"role\": \"user\", "
                  f"\"content\": \"What do cows drink?\"}}]}}'")  # fmt: skip
    console.print("stop it all:           make demo-stop")
    console.print(f"[dim]total {time.monotonic() - started:.0f} s; service log {LOG_FILE}[/]")


def start_services(gateway_url: str) -> subprocess.Popen | None:
    """`gemlora serve` in the background (pid in PID_FILE), unless the demo's is already up
    (then None)."""
    if healthy(gateway_url):
        console.print(f"already running at {gateway_url}")
        return None
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOG_FILE.open("ab") as log:
        process = subprocess.Popen(
            [*GEMLORA, "serve", str(CONFIG)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # keeps running after the demo exits
        )
    PID_FILE.write_text(str(process.pid))
    return process


def wait_for_services(gateway_url: str, process: subprocess.Popen | None) -> None:
    """Returns once the gateway, the engine and MLflow all answer."""
    if process is None:
        return
    with console.status(
        f"waiting for {gateway_url}/health (vLLM takes 1-3 minutes; log {LOG_FILE})"
    ):
        while not healthy(gateway_url):
            if process.poll() is not None:
                tail = LOG_FILE.read_text(errors="replace").splitlines()[-15:]
                console.print("[red]gemlora serve exited:[/]\n" + "\n".join(tail))
                sys.exit(1)
            time.sleep(2)
    console.print(f"up: gateway {gateway_url}, engine and MLflow healthy (pid {process.pid})")


def healthy(gateway_url: str) -> bool:
    """The gateway's /health checks the engine and the registry too."""
    try:
        return httpx.get(f"{gateway_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def upload(client: OpenAI, name: str):
    with (STYLE / name).open("rb") as f:
        stored = client.files.create(file=(f"style-chat-{name}", f), purpose="fine-tune")
    summary = stored.model_extra["gemlora"]
    console.print(f"{stored.filename} -> {stored.id}: {summary['examples']} examples, validated")
    return stored


def follow(client: OpenAI, job_id: str):
    """Print the job's events as they come until it ends; returns the final job."""
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):  # the API lists newest first
            if event.id not in seen:
                seen.add(event.id)
                clock = time.strftime("%H:%M:%S", time.localtime(event.created_at))
                console.print(f"  [dim]{clock}[/] {event.message}")
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(2)


def gate_table(gateway_url: str, adapter: str) -> dict:
    """What the gate recorded on the version, as /v1/models shows it."""
    models = httpx.get(f"{gateway_url}/v1/models", timeout=30).json()["data"]
    gate = next((m.get("eval") for m in models if m["id"] == adapter), None)
    if gate is None:
        console.print("[red]the version has no eval gate decision[/]")
        sys.exit(1)
    console.print(f"graded on the held-out questions: the adapter vs {gate['against']}")
    table = Table("grader", "adapter", "base", "difference", "95% interval", "W/T/L")
    for name, row in gate["graders"].items():
        low, high = row.get("interval", [None, None])
        table.add_row(
            name,
            f"{row['candidate']:.2f}",
            f"{row['against']:.2f}",
            f"{row.get('difference', 0):+.2f}",
            "-" if low is None else f"[{low:+.2f}, {high:+.2f}]",
            "/".join(map(str, row.get("wins_ties_losses", []))) or "-",
        )
    console.print(table)
    passed = "[green]passed[/]: champion is now the adapter"
    console.print(f"gate {passed if gate['passed'] else '[red]not passed[/]'} ({gate['reason']})")
    return gate


def compare(client: OpenAI, base: str, adapter: str) -> None:
    lines = (STYLE / "eval.jsonl").read_text().splitlines()[:QUESTIONS]
    questions = [json.loads(line)["messages"][0]["content"] for line in lines]
    table = Table("question", f"base: {base}", f"adapter: {adapter}", show_lines=True)
    asks = [(model, question) for question in questions for model in (base, adapter)]
    with ThreadPoolExecutor(len(asks)) as pool:  # all at once: the engine batches them
        answers = dict(zip(asks, pool.map(lambda a: ask(client, *a), asks), strict=True))
    for question in questions:
        table.add_row(question, answers[(base, question)], answers[(adapter, question)])
    console.print(table)


def ask(client: OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=32,
        temperature=0,
    )
    return reply.choices[0].message.content.strip()


def stop() -> None:
    """`make demo-stop`: Ctrl-C for `gemlora serve`, which stops the gateway (and its training
    workers), vLLM and MLflow."""
    if not PID_FILE.is_file():
        console.print("no demo running (no pid file)")
        return
    pid = int(PID_FILE.read_text())
    for sig, wait_s in ((signal.SIGINT, 90), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.5)
        if not alive(pid):
            break
    PID_FILE.unlink(missing_ok=True)
    console.print(f"stopped the demo (gemlora serve, pid {pid})")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    stop() if sys.argv[1:] == ["stop"] else main()
