"""`gemlora data validate|preview|split|samples` through the real command line app."""

from __future__ import annotations

import json

from data_helpers import png, write_jsonl
from typer.testing import CliRunner

from gemlora.cli import app
from gemlora.data import read_dataset

runner = CliRunner()
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def image_record(path: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": path}}, {"type": "text", "text": "Colour?"}]
    return {
        "messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "red"}]
    }


def test_validate_reports_counts_stats_and_every_problem(tmp_path, tiny_mm_counter):
    (tmp_path / "red.png").write_bytes(png())
    bad_roles = {"messages": [{"role": "user", "content": "Hi"}]}
    path = write_jsonl(
        tmp_path / "d.jsonl", [image_record("red.png"), bad_roles, image_record("gone.png"), GOOD]
    )

    result = runner.invoke(app, ["data", "validate", str(path), "--model", "tiny-gemma-3-mm"])

    assert result.exit_code == 1
    out = result.output
    table = " ".join(out.split())
    short, long = sorted(tiny_mm_counter.count(e) for e in read_dataset(path).examples)
    assert "2 usable of 4 records (2 invalid, 0 over-long)" in table
    assert f"tokens min {short}, median {short}, p95 {long}, max {long}" in table
    assert "images/example 0: 1, 1: 1" in table
    assert f"{path}:2: messages[0].role: error: a training example must end with" in out
    assert (
        f"{path}:3: messages[0].content[0].image_url: error: image file not found: gone.png" in out
    )


def test_validate_passes_a_clean_file_and_strict_stops_early(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD])
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "not measured: pass --model" in result.output

    write_jsonl(path, [GOOD, {"messages": []}, {"messages": 1}])
    strict = runner.invoke(app, ["data", "validate", str(path), "--strict"])
    assert strict.exit_code == 1
    assert f"{path}:2: messages: error: no messages" in strict.output
    assert ":3:" not in strict.output


def test_validate_over_long_drop_is_not_an_error(tmp_path, text_counter):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            GOOD,
            {
                **GOOD,
                "messages": [
                    {"role": "user", "content": "word " * 50},
                    {"role": "assistant", "content": "ok"},
                ],
            },
        ],
    )
    args = ["data", "validate", str(path), "-m", "gemma-3-270m", "--max-length", "30"]
    refused = runner.invoke(app, args)
    dropped = runner.invoke(app, [*args, "--overlong", "drop"])
    assert refused.exit_code == 1 and "over the max length of 30" in refused.output
    assert dropped.exit_code == 0 and "warning: dropped:" in dropped.output


def test_validate_unreadable_file(tmp_path):
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1 and "no such file or directory" in result.output


def test_preview_prints_what_the_model_sees(tmp_path, tiny_mm_counter):
    (tmp_path / "red.png").write_bytes(png())
    path = write_jsonl(tmp_path / "d.jsonl", [image_record("red.png")] * 5)

    result = runner.invoke(app, ["data", "preview", str(path), "-n", "2", "-m", "tiny-gemma-3-mm"])

    assert result.exit_code == 0, result.output
    view = tiny_mm_counter.model_view(read_dataset(path).examples[0])
    assert result.output.count(view) == 2
    assert "<image_soft_token>" * 4 in result.output
    assert f"{path}:3" not in result.output


def test_preview_text_dataset_with_the_default_base(tmp_path, text_counter):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    result = runner.invoke(app, ["data", "preview", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>"
        in (result.output)
    )


def test_preview_refuses_images_with_a_text_base(tmp_path, text_counter):
    (tmp_path / "red.png").write_bytes(png())
    path = write_jsonl(tmp_path / "d.jsonl", [image_record("red.png")])
    result = runner.invoke(app, ["data", "preview", str(path), "-m", "gemma-3-270m"])
    assert result.exit_code == 1 and "text-only base" in result.output


def test_split_writes_jsonl_next_to_the_input(tmp_path):
    records = [
        {
            "messages": [
                {"role": "user", "content": f"Q{n}"},
                {"role": "assistant", "content": f"A{n}"},
            ]
        }
        for n in range(40)
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [*records, {"messages": 3}])

    result = runner.invoke(app, ["data", "split", str(path), "--eval-fraction", "0.25"])

    assert result.exit_code == 0, result.output
    train = (tmp_path / "chat-train.jsonl").read_text().splitlines()
    held_out = (tmp_path / "chat-eval.jsonl").read_text().splitlines()
    assert len(train) + len(held_out) == 40 and held_out
    assert sorted(map(json.loads, train + held_out), key=str) == sorted(records, key=str)
    again = runner.invoke(app, ["data", "split", str(path), "--eval-fraction", "0.25"])
    assert again.exit_code == 0
    assert (tmp_path / "chat-eval.jsonl").read_text().splitlines() == held_out


def test_samples_command(tmp_path):
    result = runner.invoke(app, ["data", "samples", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "shapes-vqa" / "train.jsonl").is_file()
    assert (tmp_path / "style-chat" / "eval.jsonl").is_file()
    assert (tmp_path / "say-the-word" / "train.jsonl").is_file()
    assert "say-the-word: " in result.output


def test_split_refuses_files_that_are_not_json_lines(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([{"conversations": []}], indent=2))
    result = runner.invoke(app, ["data", "split", str(path)])
    assert result.exit_code == 2 and "JSON Lines" in result.output
