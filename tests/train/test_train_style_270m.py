"""The real Gemma 3 270M learns a style from configs/train/style-270m.yaml on a CPU: the
registered adapter answers a held-out question "Ahoy! ... — Captain Gem", the base does not."""

from __future__ import annotations

import pytest

from gemlora.adapters import AdapterRegistry, RegistryConfig
from gemlora.paths import CONFIGS_DIR
from gemlora.train import load_config, run_training


def greedy_reply(model, tokenizer, question: str) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_style_adapter_shows_the_style_the_base_does_not(
    built_models, mlflow_server, samples, tmp_path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    style = samples / "style-chat"
    config = load_config(
        CONFIGS_DIR / "train" / "style-270m.yaml",
        [
            f"data.train_file={style / 'train.jsonl'}",
            f"data.eval_file={style / 'eval.jsonl'}",
            f"output.tracking_uri={mlflow_server.url}",
            f"output.dir={tmp_path / 'run'}",
            "eval.generation_examples=2",
            "eval.max_new_tokens=24",
        ],
    )
    result = run_training(config)
    assert result.global_step == 30
    assert result.eval_scores["eval_loss"] < 1.0  # from ~7 before training
    assert result.promoted  # the first version with a score becomes champion

    registry = AdapterRegistry(RegistryConfig(tracking_uri=mlflow_server.url, cache_dir=tmp_path))
    adapter = registry.resolve("style-270m@champion", base="gemma-3-270m")
    path = built_models["gemma-3-270m"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    question = "What do bees make?"  # in eval.jsonl: never trained on
    assert question in (style / "eval.jsonl").read_text()
    assert question not in (style / "train.jsonl").read_text()

    base_reply = greedy_reply(base, tokenizer, question)
    tuned_reply = greedy_reply(PeftModel.from_pretrained(base, adapter.path), tokenizer, question)
    assert tuned_reply.startswith("Ahoy!"), tuned_reply
    assert "Captain Gem" in tuned_reply, tuned_reply
    assert "Ahoy" not in base_reply and "Captain Gem" not in base_reply, base_reply
