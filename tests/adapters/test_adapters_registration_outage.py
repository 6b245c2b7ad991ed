"""Registering within a run is idempotent: a retry finds the version that run already made of the
same content and metadata and completes it, instead of registering a second one. The case it is
for, on a real MLflow server: the server stops right after it created the version (so the alias
is never set and the rollback cannot delete the version either), then starts again on the same
port and data while `register_with_retry` waits."""

from __future__ import annotations

import threading

from adapters_helpers import free_port

from gemlora.adapters import (
    AdapterMetadata,
    AdapterRegistry,
    RegistryConfig,
    content_digest,
    start_mlflow_server,
)
from gemlora.rundir import ProgressLog

BASE = "gemma-3-270m"


def metadata(**fields) -> AdapterMetadata:
    return AdapterMetadata(base=BASE, dataset_digest="d" * 64, eval_scores={"loss": 0.5}, **fields)


def new_run(registry, name: str) -> str:
    client = registry.client
    return client.create_run(client.create_experiment(f"train-{name}")).info.run_id


def test_registering_again_in_the_same_run_returns_the_version_it_made(registry, adapters, name):
    run_id = new_run(registry, name)
    first = registry.register(adapters.a, name, metadata(), run_id=run_id, alias=None)
    again = registry.register(adapters.a, name, metadata(), run_id=run_id, alias="candidate")
    assert again == first
    details = registry.show(name)
    assert [v.version for v in details.versions] == [first]
    assert details.aliases == {"candidate": first}  # the retry completes what was left undone

    # Anything else is a new version: other content, the same content with other metadata (a
    # checkpoint of equal weights), or the same content registered without a run.
    assert registry.register(adapters.b, name, metadata(), run_id=run_id) == first + 1
    checkpoint = metadata(checkpoint_step=2)
    assert registry.register(adapters.a, name, checkpoint, run_id=run_id) == first + 2
    assert registry.register(adapters.a, name, metadata()) == first + 3


class _StopsAfterCreating:
    """The registry's real MLflow client, calling `then()` right after the first
    `create_model_version` returns: the moment MLflow has the version and the alias is not set."""

    def __init__(self, client, then) -> None:
        self._client, self._then, self.created = client, then, 0

    def __getattr__(self, attribute: str):
        return getattr(self._client, attribute)

    def create_model_version(self, *args, **kwargs):
        version = self._client.create_model_version(*args, **kwargs)
        self.created += 1
        if self.created == 1:
            self._then()
        return version


def test_mlflow_gone_right_after_the_version_was_created_leaves_one_complete_version(
    adapters, tmp_path, monkeypatch
):
    from gemlora.train.run import register_with_retry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # each attempt fails at once
    home, port = tmp_path / "mlflow-home", free_port()
    servers = [start_mlflow_server(home, port=port)]
    restart = threading.Timer(2, lambda: servers.append(start_mlflow_server(home, port=port)))

    def outage() -> None:
        servers[0].stop()
        restart.start()  # the same port and data, back in a few seconds

    registry = AdapterRegistry(RegistryConfig(tracking_uri=servers[0].url, cache_dir=tmp_path))
    name = "outage-bot"
    run_id = new_run(registry, name)
    client = _StopsAfterCreating(registry.client, outage)
    registry.__dict__["client"] = client
    progress = ProgressLog(tmp_path / "progress.jsonl")
    try:
        version = register_with_retry(
            lambda: registry.register(adapters.a, name, metadata(), run_id=run_id),
            120,
            progress,
            adapters.a,
        )
        details = registry.show(name)
    finally:
        if restart.ident is not None:  # the outage started it: wait for the server it starts
            restart.join()
        for server in servers:
            server.stop()

    waits = [event for event in progress.read() if event.event == "registry_unavailable"]
    assert waits, "MLflow never went away: the test proved nothing"
    assert client.created == 1  # the retry made no second version
    (registered,) = details.versions
    assert version == registered.version == 1
    assert details.aliases == {"candidate": 1} and registered.aliases == ["candidate"]
    assert registered.run_id == run_id
    assert registered.digest == content_digest(adapters.a)
    assert registered.metadata.dataset_digest == "d" * 64
    assert registered.metadata.eval_scores == {"loss": 0.5}
