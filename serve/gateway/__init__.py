"""The platform gateway: an OpenAI-compatible FastAPI app in front of the vLLM engine (API
keys, request validation, image policy, /v1/models from the registry, metrics, access logs).

    from gemlora.serve.gateway import GatewayConfig, GatewaySettings, create_app
"""

from gemlora.serve.gateway.app import Gateway, GatewaySettings, create_app, run_gateway
from gemlora.serve.gateway.auth import ApiKey, Authenticator, hash_key, load_keys, new_key
from gemlora.serve.gateway.config import GatewayConfig, ImagePolicy, SamplingDefaults
from gemlora.serve.gateway.errors import GatewayError
from gemlora.serve.gateway.schema import ChatCompletionRequest

__all__ = [
    "ApiKey",
    "Authenticator",
    "ChatCompletionRequest",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewaySettings",
    "ImagePolicy",
    "SamplingDefaults",
    "create_app",
    "hash_key",
    "load_keys",
    "new_key",
    "run_gateway",
]
