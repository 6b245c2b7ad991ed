"""The platform gateway: an OpenAI-compatible FastAPI app in front of the vLLM engine (API
keys, request validation, image policy, /v1/models from the registry, metrics, access logs).

    from gemlora.serve.gateway import GatewayConfig, GatewaySettings, create_app

API keys live in `gemlora.serve.auth` and error answers in `gemlora.serve.errors`, below both
the gateway and its jobs API (`gemlora.serve.jobs`), which share them.
"""

from gemlora.serve.gateway.app import Gateway, GatewaySettings, create_app, run_gateway
from gemlora.serve.gateway.config import GatewayConfig, ImagePolicy, SamplingDefaults
from gemlora.serve.gateway.schema import ChatCompletionRequest

__all__ = [
    "ChatCompletionRequest",
    "Gateway",
    "GatewayConfig",
    "GatewaySettings",
    "ImagePolicy",
    "SamplingDefaults",
    "create_app",
    "run_gateway",
]
