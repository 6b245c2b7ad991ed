"""Training that continues from a registered adapter (`base.init_adapter`) with supervised
fine-tuning: the run starts at that adapter's eval loss, not the base's, and records where it
came from (the parent version as a tag, a link to the run that trained it)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from gemlora.adapters import AdapterRegistry, RegistryConfig
from gemlora.train import run_training

# One step at a learning rate too small to move anything: the run's eval loss is where it began.
STANDSTILL = {"max_steps": 1, "lr": 1e-9, "save_steps": 1000}


def test_a_run_continued_from_an_adapter_starts_at_that_adapters_eval_loss(
    tiny_config, mlflow_server, tmp_path
):
    def run(directory: str, **sections):
        sections["eval"] = {"generation_examples": 0}
        sections["output"] = {"dir": str(tmp_path / directory)}
        return run_training(tiny_config(**sections))

    parent = run("parent", training={"lr": 0.02})
    ref = f"{parent.name}/{parent.version}"

    continued = run("continued", base={"init_adapter": ref}, training=STANDSTILL)
    from_base = run("from-base", training=STANDSTILL)

    start, trained, base = (run.eval_scores["eval_loss"] for run in (continued, parent, from_base))
    assert start == pytest.approx(trained, abs=1e-3), (start, trained, base)
    assert abs(base - trained) > 0.1, (base, trained)  # the adapter had moved away from the base

    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url))
    version = registry.lookup(f"{continued.name}/{continued.version}")
    assert version.metadata.parent == ref and version.metadata.method == "supervised"
    tags = MlflowClient(mlflow_server.url).get_run(continued.run_id).data.tags
    assert (tags["gemlora.parent"], tags["gemlora.parent_run_id"]) == (ref, parent.run_id)
