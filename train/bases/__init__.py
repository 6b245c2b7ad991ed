"""Local Gemma 3 bases: build, quantize, chat template."""

from gemlora.train.bases.build import BuildResult, build_model, buildable_models, read_manifest
from gemlora.train.bases.chat_template import GEMMA3_CHAT_TEMPLATE, chat_template_hash

__all__ = [
    "GEMMA3_CHAT_TEMPLATE",
    "BuildResult",
    "build_model",
    "buildable_models",
    "chat_template_hash",
    "read_manifest",
]
