"""The whole path with no manual step: `gemlora.train.run_training` registers an adapter in the
MLflow registry, and the running engine (started before the adapter existed) serves it by name."""

from __future__ import annotations

import uuid

import openai
import pytest

pytestmark = pytest.mark.engine

BASE = "tiny-gemma-3-mm"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from gemlora.data.sample_sets import write_samples

    out = tmp_path_factory.mktemp("samples")
    write_samples(out)
    return out / "shapes-vqa"


def test_an_adapter_registered_by_training_is_served_at_once(
    engines, mlflow_server, shapes, tmp_path
):
    from gemlora.train import parse_config, run_training

    engine = engines.get(BASE)  # running before the adapter exists
    name = f"trained-{uuid.uuid4().hex[:8]}"
    config = parse_config(
        {
            "base": {"model": BASE},
            "lora": {"r": 4, "alpha": 8},
            "data": {
                "train_file": str(shapes / "train.jsonl"),
                "eval_file": str(shapes / "eval.jsonl"),
            },
            "training": {"max_steps": 2, "batch_size": 2, "lr": 1e-3},
            "eval": {"generation_examples": 1, "max_new_tokens": 2},
            "output": {"name": name, "tracking_uri": mlflow_server.url, "dir": str(tmp_path)},
        }
    )
    result = run_training(config)

    client = openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=f"{name}@candidate",
        messages=[{"role": "user", "content": "What shape is it?"}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.model == f"{name}@candidate"
    assert reply.usage.completion_tokens >= 1
    # ... and it is exactly the registered version: vLLM loaded the registry's verified copy.
    version = registry_version(mlflow_server, name, result.version)
    served = {m.id: m for m in client.models.list().data}
    assert f"{name}@candidate" in served
    assert served[f"{name}@candidate"].root.endswith(f"/{result.version}-{version.digest[:12]}")


def registry_version(mlflow_server, name: str, version: int):
    from gemlora.adapters import AdapterRegistry, RegistryConfig

    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url))
    return next(v for v in registry.show(name).versions if v.version == version)
