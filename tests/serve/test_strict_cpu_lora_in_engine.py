"""gemlora's CPU LoRA kernels (`gemlora.serve.cpu_lora`, installed by the `gemlora_cpu_lora` vLLM
plugin) run inside the engine for LoRA requests: the engine process logs their first use. The
kernels' arithmetic is checked in test_cpu_lora.py, and their tokens in test_serve_routing.py;
without this test, an engine that silently fell back to vLLM's own kernels would pass both."""

from __future__ import annotations

import time

import pytest
from serve_helpers import HELD_OUT, REPLY_A
from test_serve_routing import ask

from gemlora.serve.cpu_lora import FIRST_USE

pytestmark = pytest.mark.engine


# The base as a parameter puts the test among the 270M's engine tests (tests/conftest.py), and
# the module's name after test_serve_hot_adapters.py and test_serve_routing.py: `engines.get`
# then returns their running engine instead of starting one.
@pytest.mark.parametrize("base", ["gemma-3-270m"])
def test_a_lora_request_runs_gemloras_kernels_in_the_engine(engines, names, base):
    engine = engines.get(base)
    log = engine.log_path.read_text()
    # The plugin made gemlora's wrapper the engine's punica wrapper...
    assert "LoRA on CPU: GroupedPunicaWrapperCPU, tokens grouped by adapter" in log
    # ... and a LoRA request runs its kernels (the first one in this engine logs it).
    assert ask(engine, names[base].a, HELD_OUT[0], max_tokens=8).startswith(REPLY_A[:12])
    deadline = time.monotonic() + 5  # the engine core's stderr reaches the file on its own
    while FIRST_USE not in engine.log_path.read_text():
        assert time.monotonic() < deadline, f"no '{FIRST_USE}' in {engine.log_path}"
        time.sleep(0.1)
