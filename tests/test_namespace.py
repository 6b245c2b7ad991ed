"""gemlora installs one import package, `gemlora`, and works from any directory: a user's own
`data/`, `train/`, `serve/` or `adapters/` folder never shadows gemlora's packages."""

import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

USER_PACKAGES = ("data", "train", "serve", "adapters")

# One public name of each package, and the user's own `data` still importable by its bare name.
SNIPPET = textwrap.dedent(
    """
    from gemlora.adapters import AdapterRegistry, RegistryConfig, parse_ref
    from gemlora.data import read_dataset, validate_dataset
    from gemlora.serve.engine import EngineConfig, start_engine
    from gemlora.serve.gateway import GatewaySettings, create_app
    from gemlora.serve.jobs import JobsConfig, mount_jobs
    from gemlora.train import TrainConfig, load_config, run_training
    import data, train, serve, adapters
    for package in (data, train, serve, adapters):
        assert package.OWNER == "user", package.__file__
    print("ok")
    """
)

CHAT = {
    "messages": [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Ahoy! Sunlight scatters off the air. — Captain Gem"},
    ]
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's project directory with folders named like gemlora's packages."""
    root = tmp_path_factory.mktemp("project")
    for name in USER_PACKAGES:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text('OWNER = "user"\n')
    (root / "data" / "train.jsonl").write_text(json.dumps(CHAT) + "\n")
    return root


def run_in(project: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Python in `project` as a user would: its directory comes first on sys.path."""
    return subprocess.run(
        [sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=300
    )


def test_cli_help_from_a_project_with_data_folder(project):
    result = run_in(project, "-m", "gemlora.cli", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("data", "train", "adapters", "serve"):
        assert command in result.stdout


def test_data_validate_from_a_project_with_data_folder(project):
    result = run_in(project, "-m", "gemlora.cli", "data", "validate", "data/train.jsonl")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 usable of 1 records" in result.stdout


def test_public_api_imports_beside_the_users_packages(project):
    result = run_in(project, "-c", SNIPPET)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_distribution_installs_only_the_gemlora_package():
    """Wheels record their top-level packages in top_level.txt; an editable install may not
    write one, so the packages setuptools maps are checked as well."""
    top_level = metadata.distribution("gemlora").read_text("top_level.txt")
    if top_level is not None:
        assert top_level.split() == ["gemlora"]
    project_file = Path(__file__).resolve().parents[1] / "pyproject.toml"
    import tomllib

    setuptools = tomllib.loads(project_file.read_text())["tool"]["setuptools"]
    assert {package.split(".")[0] for package in setuptools["packages"]} == {"gemlora"}
    plugins = ("gemlora_cpu_image_processor", "gemlora_cpu_lora", "gemlora_cpu_wna16")
    for name in (*plugins, "gemlora_lora_resolver"):
        (entry,) = metadata.entry_points(group="vllm.general_plugins", name=name)
        assert entry.value.startswith("gemlora.serve."), entry.value
