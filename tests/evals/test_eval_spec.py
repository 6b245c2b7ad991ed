"""The eval spec, its items and the paired comparison, without an engine (`gemlora eval` end to
end on the 270M: tests/serve/test_serve_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemlora.config import ConfigError
from gemlora.evals.items import ItemsError, load_items, prompt_messages
from gemlora.evals.spec import EvalSpec, ItemsSource, load_eval_spec
from gemlora.evals.stats import compare, paired_bootstrap
from gemlora.paths import REPO_ROOT

SIGNED = {
    "type": "string_check",
    "name": "signed",
    "input": "{{sample.output_text}}",
    "reference": "Captain Gem",
    "operation": "like",
}


def spec(**fields) -> dict:
    return (
        {"name": "t", "items": {"file": "items.jsonl"}, "models": ["a", "b"]}
        | {"graders": [SIGNED]}
        | fields
    )


def test_the_shipped_spec_validates_and_reads_its_dataset():
    from gemlora.data.sample_sets import write_samples

    write_samples()  # data/samples, as `gemlora data samples` writes it
    shipped = load_eval_spec(REPO_ROOT / "configs/eval/style.yaml")
    items = load_items(shipped.items)
    assert len(items) == 10 and shipped.baseline == shipped.models[0]
    assert items[0]["reference"].endswith("— Captain Gem")
    assert [m["role"] for m in items[0]["messages"]] == ["user"]  # the answer is not sent


def test_a_wrong_spec_names_the_field(tmp_path):
    def refused(document: dict, match: str) -> None:
        path = tmp_path / "spec.yaml"
        path.write_text(json.dumps(document))
        with pytest.raises(ConfigError, match=match):
            load_eval_spec(path)

    refused(spec(baseline="c"), r"baseline 'c' is not one of models")
    refused(spec(models=["a", "a"]), r"models: each once")
    refused(spec(items={"file": "x", "run": "y"}), r"items: .*exactly one of")
    refused(spec(graders=[SIGNED | {"operation": "near"}]), r"graders: .*\[0\] string_check")
    refused(spec(graders=[SIGNED, SIGNED]), r"grader names must differ")
    refused(spec(endpoint={"url": "ftp://x"}), r"endpoint\.url: .*http\(s\) URL")


def test_items_from_a_file_render_the_specs_messages_and_name_bad_lines(tmp_path):
    items_file = tmp_path / "items.jsonl"
    items_file.write_text('{"question": "Why?", "image": "data:image/png;base64,AA=="}\n')
    messages = [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "{{item.image}}"}},
            {"type": "text", "text": "Q: {{item.question}}"},
        ]}
    ]  # fmt: skip
    evaluated = EvalSpec.model_validate(spec(messages=messages))
    (item,) = load_items(ItemsSource(file=items_file))
    (rendered,) = prompt_messages(evaluated, item)
    assert rendered["content"][0]["image_url"]["url"] == "data:image/png;base64,AA=="
    assert rendered["content"][1]["text"] == "Q: Why?"
    with pytest.raises(ItemsError, match="item has no 'answer'"):
        prompt_messages(evaluated.model_copy(update={"messages": [
            {"role": "user", "content": "{{item.answer}}"}
        ]}), item)  # fmt: skip
    items_file.write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(ItemsError, match=r"items\.jsonl:2: not JSON"):
        load_items(ItemsSource(file=items_file))


def test_a_runs_held_out_items_are_split_as_the_run_split_them(tmp_path):
    from gemlora.data import read_dataset, split_examples
    from gemlora.data.sample_sets import write_samples

    write_samples(tmp_path / "samples")
    train = tmp_path / "samples/style-chat/train.jsonl"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"data": {"train_file": str(train), "eval_fraction": 0.25}, "output": {"name": "x"}}
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config": config}))
    items = load_items(ItemsSource(run=run_dir))
    held_out = split_examples(read_dataset(train).examples, 0.25).eval
    assert [item["reference"] for item in items] == [e.messages[-1].text for e in held_out]
    with pytest.raises(ItemsError, match="not a training run"):
        load_items(ItemsSource(run=Path(tmp_path)))


def test_the_paired_comparison_counts_items_and_leaves_ungraded_ones_out():
    result = compare("g", "new", "old", [1, 1, 0, None, 1], [0, 1, 1, 0, 0], samples=500)
    assert (result.items, result.wins, result.ties, result.losses) == (4, 2, 1, 1)
    assert result.difference == pytest.approx(0.25)
    assert result.low <= 0.25 <= result.high
    # the same seed gives the same interval; a difference that never varies has no width
    assert paired_bootstrap([0.5] * 6, 200, 0.95, 1) == (0.5, 0.5)
    first = paired_bootstrap([1, 0, 1, 1, 0], 300, 0.9, 7)
    assert first == paired_bootstrap([1, 0, 1, 1, 0], 300, 0.9, 7)
    with pytest.raises(ValueError, match="no item was graded for both"):
        compare("g", "new", "old", [None, 1], [1, None])
