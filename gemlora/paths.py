"""Where gemlora keeps what it builds and downloads: `$GEMLORA_HOME` (default ~/.cache/gemlora)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"


def gemlora_home() -> Path:
    return Path(os.environ.get("GEMLORA_HOME") or Path.home() / ".cache" / "gemlora").expanduser()


def models_dir() -> Path:
    return gemlora_home() / "models"
