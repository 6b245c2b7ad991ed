"""The adapter registry: LoRA adapters in the MLflow Model Registry, resolved to local PEFT dirs.

    registry = AdapterRegistry(RegistryConfig(tracking_uri="http://127.0.0.1:5000"))
    version = registry.register(adapter_dir, "support-bot", AdapterMetadata(base="gemma-3-270m"))
    registry.promote("support-bot")                    # champion -> the candidate version
    adapter = registry.resolve("support-bot", base="gemma-3-270m-w4a16", max_lora_rank=16)
    adapter.path                                       # a verified local PEFT directory

Light to import: mlflow, safetensors and numpy load on first use.
"""

from gemlora.adapters.cache import AdapterCache, CacheEntry
from gemlora.adapters.compat import Compatibility, TrainingBase, check_compatibility
from gemlora.adapters.errors import (
    AdapterError,
    AdapterIntegrityError,
    AdapterNotFoundError,
    IncompatibleAdapterError,
    InvalidRefError,
    RegistryUnavailableError,
)
from gemlora.adapters.metadata import AdapterMetadata, content_digest
from gemlora.adapters.mlflow_server import MlflowServer, start_mlflow_server
from gemlora.adapters.refs import AdapterRef, parse_ref
from gemlora.adapters.registry import (
    AdapterDetails,
    AdapterRegistry,
    AdapterSummary,
    AdapterVersion,
    RegistryConfig,
    ResolvedAdapter,
)

__all__ = [
    "AdapterCache",
    "AdapterDetails",
    "AdapterError",
    "AdapterIntegrityError",
    "AdapterMetadata",
    "AdapterNotFoundError",
    "AdapterRef",
    "AdapterRegistry",
    "AdapterSummary",
    "AdapterVersion",
    "CacheEntry",
    "Compatibility",
    "IncompatibleAdapterError",
    "InvalidRefError",
    "MlflowServer",
    "RegistryConfig",
    "RegistryUnavailableError",
    "ResolvedAdapter",
    "TrainingBase",
    "check_compatibility",
    "content_digest",
    "parse_ref",
    "start_mlflow_server",
]
