"""The registry against a real MLflow server: register, list, show, resolve every reference
form, aliases, promotion, deletion, import, atomic registration, TTL, integrity."""

from __future__ import annotations

import functools
import re
import threading
import time

import pytest
from adapters_helpers import free_port, make_config
from pydantic import ValidationError

from gemlora.adapters import (
    AdapterError,
    AdapterIntegrityError,
    AdapterMetadata,
    AdapterNotFoundError,
    AdapterRegistry,
    IncompatibleAdapterError,
    InvalidRefError,
    RegistryConfig,
    RegistryUnavailableError,
    content_digest,
    start_mlflow_server,
)
from gemlora.adapters.mlflow_client import make_client

TEXT_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def metadata(**fields) -> AdapterMetadata:
    return AdapterMetadata(base="gemma-3-270m", **fields)


def test_register_records_files_metadata_lineage_and_the_candidate_alias(registry, adapters, name):
    version = registry.register(
        adapters.a,
        name,
        metadata(
            chat_template_hash="3ac5a565ef4e61d6",
            dataset_digest="d" * 64,
            eval_scores={"eval_loss": 0.25},
            extra={"owner": "support-team"},
        ),
    )
    assert version == 1

    details = registry.show(name)
    assert details.aliases == {"candidate": 1}
    (registered,) = details.versions
    assert registered.aliases == ["candidate"]
    assert registered.digest == content_digest(adapters.a)
    assert registered.metadata == AdapterMetadata(
        base="gemma-3-270m",
        base_family="gemma-3-270m",
        base_quantization="none",
        rank=8,
        alpha=16,
        target_modules=TEXT_TARGETS,
        chat_template_hash="3ac5a565ef4e61d6",
        dataset_digest="d" * 64,
        eval_scores={"eval_loss": 0.25},
        extra={"owner": "support-team"},
    )
    run = registry.client.get_run(registered.run_id)
    assert registry.client.get_experiment(run.info.experiment_id).name == "gemlora-adapters"
    artifacts = registry.client.list_artifacts(
        registered.run_id, f"adapters/{name}-{registered.digest[:12]}"
    )
    assert sorted(a.path.rsplit("/", 1)[1] for a in artifacts) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    (summary,) = [s for s in registry.list() if s.name == name]
    assert (summary.version_count, summary.latest_version, summary.base) == (1, 1, "gemma-3-270m")
    assert summary.aliases == {"candidate": 1}


def test_register_into_the_training_run(registry, adapters, name):
    client = registry.client
    run = client.create_run(client.create_experiment(f"train-{name}"))
    version = registry.register(adapters.a, name, metadata(), run_id=run.info.run_id, alias=None)
    registered = registry.show(name).versions[0]
    assert (registered.version, registered.run_id, registered.aliases) == (
        version,
        run.info.run_id,
        [],
    )


def test_list_shows_only_gemlora_adapters(registry, adapters, name):
    registry.client.create_registered_model(f"{name}-sklearn")
    registry.register(adapters.a, name, metadata())
    names = {summary.name for summary in registry.list()}
    assert name in names and f"{name}-sklearn" not in names
    with pytest.raises(AdapterNotFoundError, match="is not a gemlora adapter"):
        registry.resolve(f"{name}-sklearn")


def test_resolve_every_reference_form(registry, adapters, name):
    registry.register(adapters.a, name, metadata())
    registry.register(adapters.b, name, metadata())  # candidate moves to 2
    registry.set_alias(name, "champion", 1)

    bare = registry.resolve(name)
    by_alias = registry.resolve(f"{name}@candidate")
    by_version = registry.resolve(f"{name}/1")
    assert (bare.version, by_alias.version, by_version.version) == (1, 2, 1)
    assert bare.path == by_version.path != by_alias.path
    assert content_digest(bare.path) == content_digest(adapters.a) == bare.digest
    assert content_digest(by_alias.path) == content_digest(adapters.b)
    assert bare.path.is_relative_to(registry.config.cache_dir)
    assert (by_alias.ref, by_alias.version_ref, by_alias.aliases) == (
        f"{name}@candidate",
        f"{name}/2",
        ["candidate"],
    )

    registry.delete_alias(name, "champion")
    assert registry.resolve(name).version == 2  # no champion: the newest version


def test_the_default_alias_is_configurable(mlflow_server, tmp_path, adapters, name):
    registry = AdapterRegistry(make_config(mlflow_server, tmp_path, default_alias="prod"))
    registry.register(adapters.a, name, metadata())
    registry.register(adapters.b, name, metadata())
    registry.set_alias(name, "prod", 1)
    assert registry.resolve(name).version == 1


def test_aliases_are_set_moved_and_deleted(registry, adapters, name):
    registry.register(adapters.a, name, metadata(), alias=None)
    registry.register(adapters.b, name, metadata(), alias=None)
    registry.set_alias(name, "staging", 1)
    assert registry.show(name).aliases == {"staging": 1}
    registry.set_alias(name, "staging", 2)
    assert registry.show(name).aliases == {"staging": 2}
    registry.delete_alias(name, "staging")
    assert registry.show(name).aliases == {}

    with pytest.raises(AdapterNotFoundError, match=r"has no alias 'staging' \(aliases: none\)"):
        registry.delete_alias(name, "staging")
    with pytest.raises(AdapterNotFoundError, match=r"has no version 9 \(versions: 1, 2\)"):
        registry.set_alias(name, "staging", 9)
    for reserved in ("latest", "v2", "bad alias"):
        with pytest.raises(InvalidRefError):
            registry.set_alias(name, reserved, 1)


def test_promote_moves_champion_to_the_candidate_or_a_given_version(registry, adapters, name):
    with pytest.raises(AdapterNotFoundError, match="no adapter named"):
        registry.promote(name)
    registry.register(adapters.a, name, metadata(), alias=None)
    with pytest.raises(AdapterNotFoundError, match=r"has no alias 'candidate'.*pass the version"):
        registry.promote(name)
    registry.register(adapters.b, name, metadata())
    assert registry.promote(name) == 2
    assert registry.promote(name, 1) == 1
    assert registry.show(name).aliases == {"candidate": 2, "champion": 1}


def test_promote_if_better_compares_eval_scores(registry, adapters, name):
    # No engine verifies these versions: opted in to promoting unverified ones (the default,
    # `passed`, would not: tests/adapters/test_adapters_promotion.py).
    promote_if_better = functools.partial(registry.promote_if_better, verification="not_failed")
    registry.register(adapters.a, name, metadata(eval_scores={"eval_loss": 0.5}))
    assert promote_if_better(name, 1, "eval_loss", higher_is_better=False)
    registry.register(adapters.b, name, metadata(eval_scores={"eval_loss": 0.7}))
    assert not promote_if_better(name, 2, "eval_loss", higher_is_better=False)
    assert registry.show(name).aliases["champion"] == 1
    assert promote_if_better(name, 2, "eval_loss", higher_is_better=True)
    assert registry.show(name).aliases["champion"] == 2
    with pytest.raises(AdapterError, match="has no eval score 'accuracy'"):
        promote_if_better(name, 2, "accuracy")


def test_deleting_versions_and_adapters(registry, adapters, name):
    registry.register(adapters.a, name, metadata())
    registry.register(adapters.b, name, metadata())
    registry.set_alias(name, "champion", 1)
    registry.resolve(f"{name}/1")

    registry.delete_version(name, 1)
    assert [v.version for v in registry.show(name).versions] == [2]
    assert registry.show(name).aliases == {"candidate": 2}  # champion went with version 1
    with pytest.raises(AdapterNotFoundError, match=r"has no version 1 \(versions: 2\)"):
        registry.resolve(f"{name}/1")
    assert registry.resolve(name).version == 2

    registry.delete_adapter(name)
    assert name not in {summary.name for summary in registry.list()}
    with pytest.raises(AdapterNotFoundError, match=f"no adapter named '{name}'"):
        registry.resolve(name)


def test_not_found_and_invalid_references_say_which_part(registry, adapters, name):
    registry.register(adapters.a, name, metadata(), alias=None)
    with pytest.raises(AdapterNotFoundError, match=f"no adapter named 'x{name}' in the registry"):
        registry.resolve(f"x{name}")
    with pytest.raises(AdapterNotFoundError, match=r"has no alias 'beta' \(aliases: none\)"):
        registry.resolve(f"{name}@beta")
    with pytest.raises(AdapterNotFoundError, match=r"has no version 3 \(versions: 1\)"):
        registry.resolve(f"{name}/3")
    for ref in ("a@b@c", "a/b", "a/0", "-a", "a b", "a@", "@b", ""):
        with pytest.raises(InvalidRefError, match="invalid adapter reference"):
            registry.resolve(ref)
    with pytest.raises(InvalidRefError, match="invalid adapter name 'a/b'"):
        registry.register(adapters.a, "a/b", metadata())


def test_an_incompatible_adapter_is_refused_before_anything_is_written(registry, adapters, name):
    runs_before = count_runs(registry)
    with pytest.raises(IncompatibleAdapterError) as error:
        registry.register(adapters.ia3, name, metadata())
    assert error.value.reasons == ["peft_type is 'IA3': only LoRA adapters (LORA) are served"]
    assert str(error.value).startswith(f"adapter {adapters.ia3} does not fit base gemma-3-270m: ")
    with pytest.raises(AdapterNotFoundError):
        registry.show(name)
    assert count_runs(registry) == runs_before

    with pytest.raises(IncompatibleAdapterError) as error:
        registry.register(adapters.a, name, AdapterMetadata(base="tiny-gemma-3-mm"))
    assert error.value.reasons[0] == (
        "adapter_config.json says it was trained on gemma-3-270m (family gemma-3-270m), not on "
        "tiny-gemma-3-mm (family tiny-gemma-3-mm)"
    )
    with pytest.raises(AdapterError, match="unknown base 'gemma-9'"):
        registry.register(adapters.a, name, AdapterMetadata(base="gemma-9"))


def test_a_failed_registration_leaves_no_version_behind(registry, adapters, name, monkeypatch):
    registry.register(adapters.a, name, metadata())
    runs_before = count_runs(registry)

    def fail(*_args, **_kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(registry.client, "set_registered_model_alias", fail)
    with pytest.raises(RuntimeError):
        registry.register(adapters.b, name, metadata())
    assert [v.version for v in registry.show(name).versions] == [1]
    assert count_runs(registry) == runs_before

    fresh = f"{name}-new"
    with pytest.raises(RuntimeError):
        registry.register(adapters.b, fresh, metadata())
    with pytest.raises(AdapterNotFoundError):  # the model created for it is gone too
        registry.show(fresh)


def test_import_records_the_adapters_own_config(registry, adapters, name):
    version = registry.import_adapter(adapters.tiny_vision, name, "tiny-gemma-3-mm")
    meta = registry.show(name).versions[0].metadata
    assert (meta.base, meta.base_family, meta.rank, meta.alpha) == (
        "tiny-gemma-3-mm",
        "tiny-gemma-3-mm",
        4,
        8,
    )
    assert meta.extra["imported_from"] == str(adapters.tiny_vision)
    assert meta.extra["base_model_name_or_path"].endswith("tiny-gemma-3-mm")
    assert registry.resolve(f"{name}@candidate").version == version

    with pytest.raises(IncompatibleAdapterError, match="says it was trained on tiny-gemma-3-mm"):
        registry.import_adapter(adapters.tiny_text, name, "gemma-3-270m")


def test_resolve_checks_the_served_base(registry, adapters, name):
    registry.register(adapters.a, name, metadata())
    resolved = registry.resolve(name, base="gemma-3-270m-w4a16", max_lora_rank=16)
    assert resolved.notes == [
        "trained on gemma-3-270m (none), served on gemma-3-270m-w4a16 (compressed-tensors-w4a16)"
    ]
    with pytest.raises(IncompatibleAdapterError) as error:
        registry.resolve(name, base="gemma-3-270m", max_lora_rank=4)
    assert error.value.reasons == ["rank 8 exceeds the engine's max LoRA rank 4"]
    assert str(error.value).startswith(f"adapter {name} (version 1) does not fit base gemma-3-270m")

    registry.import_adapter(adapters.tiny_text, f"{name}-tiny", "tiny-gemma-3-mm")
    with pytest.raises(
        IncompatibleAdapterError,
        match=r"trained on tiny-gemma-3-mm \(family tiny-gemma-3-mm\), but base gemma-3-270m",
    ):
        registry.resolve(f"{name}-tiny", base="gemma-3-270m", max_lora_rank=16)


def test_a_moved_alias_is_picked_up_within_the_ttl(mlflow_server, tmp_path, adapters, name):
    assert RegistryConfig().alias_ttl_s == 30
    serving = AdapterRegistry(make_config(mlflow_server, tmp_path / "a", alias_ttl_s=1.0))
    admin = AdapterRegistry(make_config(mlflow_server, tmp_path / "b"))
    admin.register(adapters.a, name, metadata())
    admin.register(adapters.b, name, metadata())
    admin.set_alias(name, "champion", 1)
    assert serving.resolve(f"{name}@champion").version == 1

    admin.set_alias(name, "champion", 2)
    moved_at = time.monotonic()
    assert serving.resolve(f"{name}@champion").version == 1  # within the TTL: trusted
    while serving.resolve(f"{name}@champion").version == 1:
        assert time.monotonic() - moved_at < 1.5, "the moved alias was not picked up in time"
        time.sleep(0.1)
    assert serving.resolve(name).version == 2
    assert serving.lookup(f"{name}@champion").version == 2


def test_a_tag_set_through_the_registry_is_seen_by_its_next_lookup(registry, adapters, name):
    registry.register(adapters.a, name, metadata())
    assert "gemlora.note" not in registry.lookup(f"{name}/1").tags  # now cached for the TTL
    registry.set_version_tag(name, 1, "gemlora.note", "checked")
    assert registry.lookup(f"{name}/1").tags["gemlora.note"] == "checked"


def test_concurrent_resolves_download_once(registry, adapters, name, monkeypatch):
    registry.register(adapters.a, name, metadata())
    downloads = []
    real_download = registry._download
    monkeypatch.setattr(
        registry, "_download", lambda *args: downloads.append(args) or real_download(*args)
    )
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.resolve(f"{name}@candidate")))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(downloads) == 1
    assert len({r.path for r in results}) == 1 and len(results) == 6


def test_tampered_registry_files_are_refused(registry, adapters, name, mlflow_server):
    registry.register(adapters.a, name, metadata())
    digest = content_digest(adapters.a)
    (stored,) = (mlflow_server.home / "mlflow" / "artifacts").rglob(f"{name}-{digest[:12]}")
    (stored / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64}')
    with pytest.raises(AdapterIntegrityError, match=f"recorded {digest[:12]}"):
        registry.resolve(name)
    assert registry.cache.entries() == []


def test_an_unreachable_registry_is_reported_and_last_lookups_still_serve(
    mlflow_server, tmp_path, adapters, name, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = f"http://127.0.0.1:{free_port()}"
    offline = AdapterRegistry(RegistryConfig(tracking_uri=dead, cache_dir=tmp_path / "offline"))
    with pytest.raises(RegistryUnavailableError, match=re.escape(f"registry at {dead} (")):
        offline.list()

    registry = AdapterRegistry(make_config(mlflow_server, tmp_path / "cache", alias_ttl_s=0))
    registry.register(adapters.a, name, metadata())
    served = registry.resolve(name)
    registry.__dict__["client"] = make_client(dead)  # the server goes away
    assert registry.resolve(name) == served
    with pytest.raises(RegistryUnavailableError):
        registry.resolve(f"{name}/1")  # never looked up while the server was there
    registry.config.stale_limit_s = 0  # past the stale limit, a last lookup is not trusted
    with pytest.raises(RegistryUnavailableError):
        registry.resolve(name)


def test_the_file_store_is_refused():
    for uri in ("/tmp/mlruns", "file:///tmp/mlruns", "mlruns"):
        with pytest.raises(ValidationError, match="the MLflow file store is not supported"):
            RegistryConfig(tracking_uri=uri)


def test_the_mlflow_server_binds_loopback_only(tmp_path):
    with pytest.raises(ValueError, match=r"loopback addresses only, not 0\.0\.0\.0"):
        start_mlflow_server(tmp_path, port=5999, host="0.0.0.0")


def test_resolved_adapters_load_in_peft_and_change_the_greedy_tokens(
    registry, adapters, name, base_270m
):
    import torch
    from peft import PeftModel

    registry.register(adapters.a, name, metadata())
    registry.register(adapters.b, name, metadata())
    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563]])  # <bos> and five ordinary tokens

    def greedy(model) -> list[int]:
        with torch.no_grad():
            return model(input_ids=ids).logits[0].argmax(-1).tolist()

    model, tokens = base_270m, {"base": greedy(base_270m)}
    for ref in (f"{name}/1", f"{name}/2"):
        peft_model = PeftModel.from_pretrained(model, registry.resolve(ref).path)
        tokens[ref] = greedy(peft_model)
        model = peft_model.unload()
    assert len({tuple(t) for t in tokens.values()}) == 3, tokens


def count_runs(registry) -> int:
    experiment = registry.client.get_experiment_by_name("gemlora-adapters")
    if experiment is None:
        return 0
    return len(registry.client.search_runs([experiment.experiment_id], max_results=1000))
