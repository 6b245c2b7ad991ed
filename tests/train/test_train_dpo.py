"""DPO (`method: dpo`): the config, data of the wrong kind, a DPO run on the tiny multimodal
Gemma 3 with image pairs that continues a registered SFT version, NF4, TRL's loss through
gemlora's loss head, and the real 270M learning to prefer the Captain Gem style."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from train_helpers import changed, events, lora_tensors, tiny_document

from gemlora.adapters import AdapterRegistry, RegistryConfig
from gemlora.paths import CONFIGS_DIR
from gemlora.train import ConfigError, load_config, parse_config, run_training

MINIMAL = {"data": {"train_file": "train.jsonl"}, "output": {"name": "my-adapter"}}
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def errors_of(document: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return caught.value.problems


def shapes_preferences(source: Path, destination: Path) -> Path:
    """Each shapes-vqa question of `source` as an OpenAI preference pair: its answer chosen,
    the next different answer in the file rejected. Written next to `source` (image paths stay
    relative to it)."""
    records = [json.loads(line) for line in source.read_text().splitlines()]
    answers = [record["messages"][1]["content"] for record in records]
    pairs = []
    for index, record in enumerate(records):
        others = answers[index + 1 :] + answers[:index]
        wrong = next(answer for answer in others if answer != answers[index])
        pairs.append(
            {
                "input": {"messages": record["messages"][:1]},
                "preferred_output": [record["messages"][1]],
                "non_preferred_output": [{"role": "assistant", "content": wrong}],
            }
        )
    destination.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    return destination


@pytest.fixture(scope="session")
def shapes_pairs(shapes) -> tuple[Path, Path]:
    """The tiny runs' shapes subset (16 train, 4 eval) as image preference pairs."""
    return tuple(
        shapes_preferences(path, path.with_name(f"{path.stem}-pairs.jsonl")) for path in shapes
    )


def tiny_dpo_document(shapes_pairs, **identity) -> dict:
    document = tiny_document(shapes_pairs, **identity)
    document["method"] = "dpo"
    document["eval"]["margin_pairs"] = 4
    return document


# --- config -----------------------------------------------------------------------------------


def test_supervised_stays_the_default_and_dpo_has_trl_defaults():
    config = parse_config(MINIMAL)
    assert config.method == "supervised"
    assert config.base.init_adapter is None
    dpo = parse_config(MINIMAL | {"method": "dpo"}).dpo
    assert (dpo.beta, dpo.loss_type, dpo.label_smoothing) == (0.1, "sigmoid", 0.0)
    assert dpo.loss_types() == (["sigmoid"], [1.0])
    rpo = parse_config(MINIMAL | {"method": "dpo", "dpo": {"rpo_alpha": 0.5}}).dpo
    assert rpo.loss_types() == (["sigmoid", "sft"], [1.0, 0.5])


def test_dpo_mistakes_name_the_field():
    dpo = MINIMAL | {"method": "dpo"}
    assert errors_of(MINIMAL | {"method": "ppo"})[0].startswith("method: ")
    assert errors_of(dpo | {"dpo": {"loss_type": "nope"}})[0].startswith("dpo.loss_type: ")
    assert errors_of(dpo | {"dpo": {"beta": 0}})[0].startswith("dpo.beta: ")
    assert errors_of(dpo | {"dpo": {"betta": 1}}) == ["dpo.betta: unknown field"]
    (exo,) = errors_of(dpo | {"dpo": {"loss_type": "exo_pair"}})
    assert exo.startswith("dpo.label_smoothing: ")
    (divergence,) = errors_of(
        dpo | {"dpo": {"loss_type": "bco_pair", "f_divergence_type": "js_divergence"}}
    )
    assert divergence.startswith("dpo.f_divergence_type: ")
    # Settings of the other method are refused, not ignored.
    assert errors_of(MINIMAL | {"dpo": {"beta": 0.5}}) == [
        "dpo: read only with `method: dpo`; this run is supervised"
    ]
    (grouped,) = errors_of(dpo | {"training": {"group_by_length": True}})
    assert grouped.startswith("training.group_by_length: ")
    promote = {"name": "x", "promote_if": {"metric": "eval_rewards_accuracy"}}
    (metric,) = errors_of(MINIMAL | {"output": promote})
    assert metric.startswith("output.promote_if.metric: ") and "method: dpo" in metric
    assert parse_config(dpo | {"output": promote}).output.promote_if.to == "champion"


def test_a_format_of_the_other_kind_names_the_field():
    chat = {"train_file": "train.jsonl", "format": "openai"}
    (problem,) = errors_of(MINIMAL | {"method": "dpo", "data": chat})
    assert problem.startswith("data.format: ") and "openai-preference" in problem
    pairs = {"train_file": "train.jsonl", "format": "trl-preference"}
    (problem,) = errors_of(MINIMAL | {"data": pairs})
    assert problem.startswith("data.format: ") and "sharegpt" in problem


def test_a_file_of_the_other_kind_names_the_field(samples):
    from gemlora.train.dataset import load_training_data

    chats = {"train_file": str(samples / "style-chat/train.jsonl")}
    chat = parse_config({**MINIMAL, "method": "dpo", "data": chats})
    with pytest.raises(ConfigError) as caught:
        load_training_data(chat.data, "gemma-3-270m", "dpo")
    (problem,) = caught.value.problems
    assert problem.startswith("data.train_file: ") and "a chat dataset" in problem
    assert "method: supervised" in problem

    pairs = samples / "style-preference"
    supervised = parse_config(
        {
            **MINIMAL,
            "data": {
                "train_file": str(samples / "style-chat/train.jsonl"),
                "eval_file": str(pairs / "eval.jsonl"),
            },
        }
    )
    with pytest.raises(ConfigError) as caught:
        load_training_data(supervised.data, "gemma-3-270m", "supervised")
    (problem,) = caught.value.problems
    assert problem.startswith("data.eval_file: ") and "a preference dataset" in problem


def test_the_dpo_config_trains_the_270m_on_the_served_base_with_style_pairs():
    config = load_config(CONFIGS_DIR / "train" / "style-270m-dpo.yaml")
    assert config.method == "dpo"
    assert config.base.model == "gemma-3-270m-w4a16"
    assert config.data.train_file.parts[-2:] == ("style-preference", "train.jsonl")
    assert config.output.promote_if.metric == "eval_rewards_accuracy"


def test_pair_metrics_are_means_over_pairs():
    from gemlora.train.dpo import pair_means

    metrics = {"rewards/accuracies": [1.0, 1.0, 0.5], "entropy": [1.0, 2.0, 3.0]}
    pair_means(metrics, [4, 4, 2])
    assert metrics["rewards/accuracies"] == [0.9]  # 9 of 10 pairs; batch means would say 0.83
    assert metrics["entropy"] == [1.0, 2.0, 3.0]  # token-level metrics: TRL's own


# --- tiny multimodal runs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_then_dpo(built_models, mlflow_server, shapes, shapes_pairs, tmp_path_factory):
    """A registered SFT version (LoRA r=4), then a DPO run on image pairs from it:
    `base.init_adapter: NAME@candidate`, while its `lora` section says r=16."""
    name = f"tiny-dpo-{uuid.uuid4().hex[:6]}"
    sft = tiny_document(
        shapes,
        name=name,
        tracking_uri=mlflow_server.url,
        run_dir=tmp_path_factory.mktemp("sft-run"),
    )
    sft["training"]["max_steps"] = 2
    sft["eval"]["generation_examples"] = 0
    parent = run_training(parse_config(sft))

    dpo = tiny_dpo_document(
        shapes_pairs,
        name=name,
        tracking_uri=mlflow_server.url,
        run_dir=tmp_path_factory.mktemp("dpo-run"),
    )
    dpo["base"]["init_adapter"] = f"{name}@candidate"
    dpo["lora"] = {"r": 16, "alpha": 32}
    # No engine verifies it here: opt in to promoting unverified versions.
    dpo["output"]["promote_if"] = {
        "metric": "eval_rewards_accuracy",
        "to": "champion",
        "verification": "not_failed",
    }
    config = parse_config(dpo)
    return parent, config, run_training(config)


def test_dpo_run_registers_a_version_with_method_parent_and_reward_scores(
    sft_then_dpo, mlflow_server, tmp_path
):
    parent, config, result = sft_then_dpo
    assert result.global_step == 4 and result.version == parent.version + 1
    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    details = registry.show(config.output.name)
    version = next(v for v in details.versions if v.version == result.version)
    assert version.tags["gemlora.method"] == "dpo"
    assert version.tags["gemlora.parent"] == f"{config.output.name}/{parent.version}"
    first = next(v for v in details.versions if v.version == parent.version)
    assert first.tags["gemlora.method"] == "supervised" and "gemlora.parent" not in first.tags
    metadata = version.metadata
    assert (metadata.method, metadata.parent) == ("dpo", f"{config.output.name}/{parent.version}")
    # The starting adapter's LoRA settings are what was trained, not the `lora` section's.
    assert metadata.rank == 4 and metadata.alpha == 8
    scores = {
        "eval_loss",
        "eval_rewards_accuracy",
        "eval_rewards_margin",
        "logp_margin",
        "base_logp_margin",
        "exact",
        "contains",
        "base_exact",
        "base_contains",
    }
    assert set(metadata.eval_scores) == scores
    assert 0 <= metadata.eval_scores["eval_rewards_accuracy"] <= 1
    assert details.aliases["candidate"] == result.version
    assert result.promoted is True  # the first version with a reward accuracy

    # Trained onward from the parent: every LoRA tensor moved; only the trained adapter is
    # registered (not TRL's frozen reference copy, adapter "ref").
    resolved = registry.resolve(f"{config.output.name}/{result.version}", base="tiny-gemma-3-mm")
    assert not (resolved.path / "ref").exists() and not (result.adapter_dir / "ref").exists()
    before = lora_tensors(parent.adapter_dir)
    assert changed(before, lora_tensors(resolved.path)) == len(before)


def test_dpo_run_logs_rewards_per_step_and_on_held_out_pairs(sft_then_dpo, mlflow_server):
    parent, config, result = sft_then_dpo
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "dpo"
    assert run.data.params["dpo.beta"] == "0.1"
    assert run.data.params["resolved.init_adapter"] == f"{config.output.name}/{parent.version}"
    tags = run.data.tags
    assert tags["gemlora.method"] == "dpo"
    assert tags["gemlora.parent"] == f"{config.output.name}/{parent.version}"
    assert tags["gemlora.parent_run_id"] == parent.run_id
    for metric in ("loss", *REWARDS):
        assert [m.step for m in client.get_metric_history(result.run_id, metric)] == [1, 2, 3, 4]
    metrics = run.data.metrics
    for metric in (
        "eval_loss",
        *(f"eval_{name}" for name in REWARDS),
        "eval_base_logp_margin",
        "eval_adapter_logp_margin",
        "eval_adapter_contains",
        "tokens_per_second",
    ):
        assert metric in metrics, metric
    assert metrics["eval_rewards/accuracies"] == result.eval_scores["eval_rewards_accuracy"]
    assert metrics["eval_adapter_logp_margin"] == result.eval_scores["logp_margin"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "eval")}
    assert artifacts == {"eval/generations.json", "eval/margins.json"}

    log = events(result.run_dir)
    steps = [e.step for e in log if e.event == "log" and "rewards/accuracies" in e.metrics]
    assert steps == [1, 2, 3, 4]
    kinds = [e.event for e in log]
    assert kinds.index("margin_eval") < kinds.index("generation_eval") < kinds.index("finished")
    state = json.loads((result.run_dir / "run.json").read_text())
    assert state["init_adapter"] == f"{config.output.name}/{parent.version}"


def test_init_adapter_that_does_not_fit_is_refused_before_mlflow(
    sft_then_dpo, mlflow_server, shapes_pairs, tmp_path
):
    parent, config, _ = sft_then_dpo
    document = tiny_dpo_document(
        shapes_pairs, name="never", tracking_uri=mlflow_server.url, run_dir=tmp_path / "run"
    )
    for ref, reason in (
        (f"{config.output.name}/99", "has no version 99"),
        ("no-such-adapter@candidate", "no adapter named"),
        (str(tmp_path / "missing"), "no such directory"),
    ):
        document["base"]["init_adapter"] = ref
        with pytest.raises(ConfigError) as caught:
            run_training(parse_config(document))
        (problem,) = caught.value.problems
        assert problem.startswith("base.init_adapter: ") and reason in problem, problem
    # A directory works too, but only on a base of the adapter's family.
    document["base"] = {"model": "gemma-3-270m", "init_adapter": str(parent.adapter_dir)}
    style = shapes_pairs[0].parents[1] / "style-preference"
    document["data"] = {"train_file": str(style / "train.jsonl"), "eval_fraction": 0}
    with pytest.raises(ConfigError, match=r"base\.init_adapter: .*family"):
        run_training(parse_config(document))
    assert json.loads((tmp_path / "run" / "run.json").read_text()).get("run_id") is None


def test_dpo_trains_an_nf4_base(built_models, mlflow_server, shapes_pairs, tmp_path):
    document = tiny_dpo_document(
        shapes_pairs, name="tiny-dpo-nf4", tracking_uri=mlflow_server.url, run_dir=tmp_path
    )
    document["base"]["quantization"] = "bnb-nf4"
    document["training"] |= {"max_steps": 2, "eval_steps": 1}
    document["eval"] |= {"generation_examples": 0, "margin_pairs": 0}
    document["output"]["register_adapter"] = False
    result = run_training(parse_config(document))
    assert result.version is None
    # Fresh LoRA B matrices start at zero: after an eval and two steps none is.
    b_tensors = {k: v for k, v in lora_tensors(result.adapter_dir).items() if "lora_B" in k}
    assert b_tensors and all(tensor.abs().sum() > 0 for tensor in b_tensors.values())


@pytest.fixture(scope="module")
def tiny_dpo_trainer(built_models, shapes_pairs, tmp_path_factory):
    """gemlora's DPO trainer on the tiny multimodal base and the image pairs, built but not
    trained; batches of 3 pairs, so the 4 held-out pairs are evaluated in batches of 3 and 1."""
    from gemlora.bases import resolve_base
    from gemlora.train.dataset import load_training_data
    from gemlora.train.dpo import DpoMethod
    from gemlora.train.model import load_base

    run_dir = tmp_path_factory.mktemp("dpo-trainer")
    document = tiny_dpo_document(
        shapes_pairs, name="x", tracking_uri="http://127.0.0.1:1", run_dir=run_dir
    )
    document["training"]["batch_size"] = 3
    config = parse_config(document)
    data = load_training_data(config.data, "tiny-gemma-3-mm", "dpo")
    loaded = load_base(config.base, resolve_base("tiny-gemma-3-mm"))
    return DpoMethod().build_trainer(config, loaded, data, run_dir, None)


def randomize_adapter(trainer, seed: int) -> None:
    """A trained-looking adapter (B != 0): the policy differs from the reference."""
    import torch

    torch.manual_seed(seed)
    for parameter in trainer.model.parameters():
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.05)


def test_dpo_loss_through_the_fast_head_equals_trls(tiny_dpo_trainer):
    """One batch of image pairs: loss and reward metrics with gemlora's loss head (labelled
    positions only, CPU kernel) are TRL's own."""
    import torch
    from trl import DPOTrainer

    trainer = tiny_dpo_trainer
    randomize_adapter(trainer, 0)
    trainer._metrics["train"].clear()
    trainer.model.zero_grad()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    fast = trainer.compute_loss(trainer.model, batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.zero_grad()
    reference = DPOTrainer.compute_loss(trainer, trainer.model, batch)
    reference.backward()
    trl_grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert torch.allclose(fast, reference, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(fast_grads, trl_grads, strict=True):
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-6)
    metrics = trainer._metrics["train"]
    for name in REWARDS:
        first, second = metrics[name]
        assert first == pytest.approx(second, rel=1e-3, abs=1e-5), name


def test_held_out_reward_accuracy_from_trls_eval_is_a_mean_over_pairs(tiny_dpo_trainer):
    """`trainer.evaluate()` (TRL's eval loop, gemlora's trainer) on 4 held-out pairs in batches
    of 3 and 1 reports the rewards of each pair, computed here one pair at a time from the full
    logits of the policy and of the reference (the adapter switched off), averaged over pairs:
    TRL's mean of batch means would count the last pair three times."""
    import torch

    trainer = tiny_dpo_trainer
    # Measured with this seed: margins +0.010, +0.031, -0.018, -0.014 (2 of 4 pairs right:
    # 0.5 over pairs, 0.33 as the mean of the batches' means).
    randomize_adapter(trainer, 3)
    model, beta = trainer.model, trainer.args.beta
    assert [len(batch["input_ids"]) // 2 for batch in trainer.get_eval_dataloader()] == [3, 1]
    metrics = trainer.evaluate()

    def reply_logps(inputs: dict) -> torch.Tensor:
        """Summed log-probabilities of each row's reply tokens (chosen row, rejected row)."""
        kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        logits = model(**kwargs).logits[:, :-1].float()
        tokens = inputs["input_ids"][:, 1:]
        per_token = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
        return (per_token * inputs["completion_mask"][:, 1:]).sum(-1)

    margins = []  # chosen reward - rejected reward, per pair
    model.eval()
    with torch.no_grad():
        for row in trainer.eval_dataset:
            inputs = trainer._prepare_inputs(trainer.data_collator([row]))
            policy = reply_logps(inputs)
            with model.disable_adapter():
                reference = reply_logps(inputs)
            chosen, rejected = beta * (policy - reference)
            margins.append(float(chosen - rejected))
    assert len(margins) == 4 and min(abs(m) for m in margins) > 1e-3  # no near-ties
    correct = [float(m > 0) for m in margins]
    per_pair = sum(correct) / 4
    batch_means = (sum(correct[:3]) / 3 + correct[3]) / 2
    assert per_pair != batch_means  # the pairs tell the two averages apart
    assert metrics["eval_rewards/accuracies"] == pytest.approx(per_pair)
    assert metrics["eval_rewards/margins"] == pytest.approx(sum(margins) / 4, rel=1e-3)


# --- the 270M -----------------------------------------------------------------------------------


def logp_margin(model, tokenizer, question: str, chosen: str, rejected: str) -> float:
    """log p(chosen) - log p(rejected), summed over each reply's tokens after the prompt."""
    import torch

    def encode(messages: list[dict], **options) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **options)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # <bos> is in the text

    def reply_logp(reply: str) -> float:
        messages = [{"role": "user", "content": question}]
        prompt = encode(messages, add_generation_prompt=True)
        full = encode([*messages, {"role": "assistant", "content": reply}])
        assert full[: len(prompt)] == prompt
        ids = torch.tensor([full])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        return log_probs.gather(-1, ids[0, len(prompt) :, None]).sum().item()

    return reply_logp(chosen) - reply_logp(rejected)


@pytest.mark.slow
def test_dpo_on_the_270m_prefers_the_style_on_held_out_pairs(
    built_models, mlflow_server, samples, tmp_path
):
    from peft import PeftModel

    from gemlora.bases import resolve_base
    from gemlora.data import read_preferences
    from gemlora.train.model import load_base

    pairs = samples / "style-preference"
    config = load_config(
        CONFIGS_DIR / "train" / "style-270m-dpo.yaml",
        [
            f"data.train_file={pairs / 'train.jsonl'}",
            f"data.eval_file={pairs / 'eval.jsonl'}",
            f"output.tracking_uri={mlflow_server.url}",
            f"output.dir={tmp_path / 'run'}",
            "eval.generation_examples=2",
            "eval.max_new_tokens=24",
        ],
    )
    result = run_training(config)
    scores = result.eval_scores
    assert scores["eval_rewards_accuracy"] >= 0.9, scores
    assert scores["logp_margin"] > scores["base_logp_margin"], scores
    assert result.promoted

    # The registered adapter, checked apart from training's own code: on every held-out pair
    # it prefers the chosen reply by more than the base does.
    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    adapter = registry.resolve(f"{config.output.name}@champion", base=config.base.model)
    loaded = load_base(config.base, resolve_base(config.base.model))
    tokenizer = loaded.processor
    held_out = read_preferences(pairs / "eval.jsonl").examples
    texts = [(p.prompt[-1].text, p.chosen.text, p.rejected.text) for p in held_out]
    base = [logp_margin(loaded.model, tokenizer, *text) for text in texts]
    tuned = PeftModel.from_pretrained(loaded.model, adapter.path).eval()
    after = [logp_margin(tuned, tokenizer, *text) for text in texts]
    assert sum(after) / len(after) > sum(base) / len(base)
    assert all(a > b for a, b in zip(after, base, strict=True)), (base, after)
    assert sum(after) / len(after) == pytest.approx(scores["logp_margin"], rel=0.05, abs=0.05)
