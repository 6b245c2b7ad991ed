# gemlora: `make demo` shows the platform, `make test` proves it.
PY := .venv/bin/python
GEMLORA := .venv/bin/gemlora

.PHONY: install models data demo demo-stop lint test test-fast bench-gateway bench-serving bench-cpu-lora bench-startup bench-reliability bench-train bench-eval clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install:  ## create .venv (CPU or GPU stack) and .venv-quant; a no-op when up to date
	@bash scripts/install.sh

models: install  ## build the local Gemma 3 bases into $$GEMLORA_HOME/models
	$(GEMLORA) models build

data: install  ## generate the sample datasets in data/samples/
	$(GEMLORA) data samples

demo: install  ## serve Gemma 3 270M, fine-tune it through the API, gate it against the base (~7 min fresh)
	$(PY) scripts/demo.py

demo-stop:  ## stop what `make demo` left running (gateway, vLLM, MLflow)
	$(PY) scripts/demo.py stop

lint: install  ## ruff
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: install  ## the whole test suite (real MLflow, real vLLM engines; 821 tests, 41 min on 2 cores)
	$(PY) -m pytest

test-fast: install  ## tests that need no vLLM engine
	$(PY) -m pytest -m "not engine"

bench-gateway: install  ## gateway overhead vs vLLM directly at 1/8/32 clients (JSON; ~10 min)
	$(PY) benchmarks/gateway.py --out benchmarks/results/gateway.json

bench-serving: install  ## base, 1 and N adapters; gemlora vs vLLM kernels vs before; hot and new adapters (JSON + PNG; ~30 min)
	$(PY) benchmarks/serving.py --out benchmarks/results/serving.json

bench-cpu-lora: install  ## the CPU multi-LoRA kernels alone: vLLM's vs gemlora's layouts (JSON + PNG; ~2 min)
	$(PY) benchmarks/cpu_lora.py --out benchmarks/results/cpu_lora.json

bench-startup: install  ## a multimodal engine's start to first answer: gemlora's processor loading vs vLLM's (JSON + PNG; ~11 min)
	$(PY) benchmarks/startup.py --out benchmarks/results/startup.json

bench-reliability: install  ## soak, engine and MLflow SIGKILL mid-soak, disconnect storm, 10,000 fuzzed requests, hung engine, early pause (JSON + PNG; ~23 min)
	$(PY) benchmarks/reliability.py --out benchmarks/results/reliability.json

bench-eval: install  ## an eval of 16 items on 4 models: concurrent vs one call after another (JSON + PNG; ~13 min)
	$(PY) benchmarks/eval.py --out benchmarks/results/eval.json

bench-train: install  ## gemlora's trainer vs plain TRL: step time, memory, loss curves (JSON + PNG; ~20 min)
	$(PY) benchmarks/train.py --out benchmarks/results/train.json

clean:  ## remove environments and caches in the tree (not $$GEMLORA_HOME)
	rm -rf .venv .venv-quant .pytest_cache .ruff_cache *.egg-info
