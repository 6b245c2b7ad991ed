"""`gemlora adapters ...` through the real command line app and a real MLflow server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from adapters_helpers import free_port
from typer.testing import CliRunner

from gemlora.adapters import content_digest
from gemlora.cli import app

# Wide enough that no table cell wraps (the shared server lists every test's adapters).
runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture
def cli(mlflow_server, tmp_path):
    """`gemlora adapters <args>` against the session's server, with a cache in tmp_path."""
    options = ["--tracking-uri", mlflow_server.url, "--cache-dir", str(tmp_path / "cache")]

    def invoke(*args: str):
        return runner.invoke(app, ["adapters", *options, *args])

    return invoke


def words(output: str) -> str:
    """Table output with box drawing and runs of whitespace collapsed."""
    return " ".join(output.replace("│", " ").replace("┃", " ").split())


def test_the_adapter_lifecycle_from_the_command_line(cli, adapters, name):
    imported = cli("import", str(adapters.a), "--name", name, "--base", "gemma-3-270m")
    assert imported.exit_code == 0, imported.output
    assert imported.output == f"imported {adapters.a} as {name}/1 ({name}@candidate)\n"
    assert cli("import", str(adapters.b), "--name", name, "--base", "gemma-3-270m").exit_code == 0

    listed = cli("list")
    assert listed.exit_code == 0, listed.output
    assert f"{name} 2 2 candidate->2 gemma-3-270m" in words(listed.output)
    as_json = json.loads(cli("list", "--json").output)
    assert {"name": name, "version_count": 2, "latest_version": 2} in [
        {k: a[k] for k in ("name", "version_count", "latest_version")} for a in as_json
    ]

    promoted = cli("promote", name, "--version", "1")
    assert promoted.output == f"{name}@champion -> version 1\n"
    assert cli("alias", name, "staging", "2").output == f"{name}@staging -> version 2\n"

    shown = cli("show", name)
    assert shown.exit_code == 0, shown.output
    table = words(shown.output)
    assert "aliases: candidate->2, champion->1, staging->2" in table
    digest = content_digest(adapters.a)[:12]
    targets = "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    assert (
        f"1 champion gemma-3-270m 8 {targets} - - - {digest}" in table
    )  # no eval, unverified, ungated

    resolved = cli("resolve", name)
    assert resolved.exit_code == 0, resolved.output
    path = Path(resolved.stdout.strip())
    assert content_digest(path) == content_digest(adapters.a)

    on_int4 = cli("resolve", f"{name}@staging", "--base", "gemma-3-270m-w4a16")
    assert on_int4.exit_code == 0, on_int4.output
    assert content_digest(Path(on_int4.stdout.strip())) == content_digest(adapters.b)
    assert "note: trained on gemma-3-270m (none), served on gemma-3-270m-w4a16" in on_int4.stderr

    assert cli("alias", name, "staging", "--delete").output == f"deleted alias {name}@staging\n"
    assert cli("rm", name, "--version", "1").output == f"deleted {name}/1\n"
    refused = cli("rm", name)
    assert refused.exit_code == 1
    assert "pass --version V to delete one version, or --all" in refused.output
    assert cli("rm", name, "--all").output == f"deleted {name} and all its versions\n"
    assert name not in cli("list").output


def test_errors_are_one_clear_message_and_exit_code_1(cli, adapters, name):
    missing = cli("resolve", f"{name}@champion")
    assert missing.exit_code == 1
    assert missing.stderr.startswith(f"error: no adapter named '{name}' in the registry")
    assert "Traceback" not in missing.output

    incompatible = cli("import", str(adapters.rank32), "--name", name, "--base", "gemma-3-270m")
    assert incompatible.exit_code == 0  # registration allows any rank vLLM can serve
    too_big = cli("resolve", name, "--base", "gemma-3-270m", "--max-lora-rank", "16")
    assert too_big.exit_code == 1
    assert too_big.stderr.splitlines() == [
        f"error: adapter {name} (version 1) does not fit base gemma-3-270m:",
        "  - rank 32 exceeds the engine's max LoRA rank 16",
    ]

    ia3 = cli("import", str(adapters.ia3), "--name", name, "--base", "gemma-3-270m")
    assert ia3.exit_code == 1
    assert "  - peft_type is 'IA3': only LoRA adapters (LORA) are served" in ia3.stderr

    bad_ref = cli("resolve", "a@b@c")
    assert bad_ref.exit_code == 1
    assert bad_ref.stderr.startswith("error: invalid adapter reference 'a@b@c'")


def test_an_unreachable_server_fails_fast(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["adapters", "--tracking-uri", dead, "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot use the MLflow registry at {dead}")

    file_store = runner.invoke(app, ["adapters", "--tracking-uri", str(tmp_path), "list"])
    assert file_store.exit_code == 1
    assert "the MLflow file store is not supported" in file_store.stderr
