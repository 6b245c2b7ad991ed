"""A trained adapter outlives an MLflow outage: registration is retried with backoff while the
registry is unreachable (each wait is a progress event, shown by the jobs API), and gives up
after `output.register_retry_s` naming where the adapter is kept. Real MLflow, started late."""

from __future__ import annotations

import threading

import pytest
from train_helpers import free_port

from gemlora.adapters import AdapterMetadata, AdapterRegistry, RegistryConfig
from gemlora.adapters import RegistryUnavailableError as Unavailable
from gemlora.adapters.mlflow_server import start_mlflow_server
from gemlora.rundir import ProgressLog
from gemlora.train.run import register_with_retry

BASE = "tiny-gemma-3-mm"


@pytest.fixture
def adapter(built_models, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built_models[BASE], dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.fixture
def quick_failures(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # each attempt fails at once


def test_registration_waits_for_mlflow_to_come_back(adapter, tmp_path, quick_failures):
    port = free_port()
    registry = AdapterRegistry(
        RegistryConfig(tracking_uri=f"http://127.0.0.1:{port}", cache_dir=tmp_path / "cache")
    )
    progress = ProgressLog(tmp_path / "progress.jsonl")
    servers = []
    late = threading.Timer(
        3, lambda: servers.append(start_mlflow_server(tmp_path / "mlflow", port=port))
    )
    late.start()
    try:
        version = register_with_retry(
            lambda: registry.register(adapter, "outage-bot", AdapterMetadata(base=BASE)),
            120,
            progress,
            adapter,
        )
        assert version == 1 and registry.show("outage-bot").versions[0].version == 1
    finally:
        late.join()
        for server in servers:
            server.stop()
    waits = [r for r in progress.read() if r.event == "registry_unavailable"]
    assert waits and "cannot use the MLflow registry" in waits[0].error
    level, message, _ = waits[0].describe()
    assert level == "warn" and message.startswith("MLflow is unreachable; the adapter is kept")


def test_registration_gives_up_after_the_window_and_says_where_the_adapter_is(
    adapter, tmp_path, quick_failures
):
    dead = RegistryConfig(tracking_uri=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path)
    registry = AdapterRegistry(dead)
    with pytest.raises(Unavailable, match=r"output\.register_retry_s") as raised:
        register_with_retry(
            lambda: registry.register(adapter, "outage-bot", AdapterMetadata(base=BASE)),
            0,
            ProgressLog(tmp_path / "progress.jsonl"),
            adapter,
        )
    assert f"the trained adapter is kept in {adapter}" in str(raised.value)
