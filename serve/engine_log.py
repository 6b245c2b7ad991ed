"""gemlora's log lines inside vLLM's processes.

Its own module because the vLLM plugins and the adapter routing (which one of the plugins
installs) both call it: kept in either, the two would import each other.
"""

import logging


def log_to_engine_log() -> None:
    """vLLM configures only its own loggers: gemlora's (routing, hot adapters, CPU LoRA) write
    to stderr, which is the engine's log."""
    root = logging.getLogger("gemlora")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
