"""One precision rule for training and serving: bf16 where the hardware runs it natively, else
fp32. Hardware capabilities are injected; nothing here needs a GPU."""

import pytest

from gemlora.bases import resolve_base
from gemlora.precision import Hardware, auto_precision, resolve_precision

AVX2 = frozenset({"avx", "avx2", "fma"})


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (Hardware(cuda=True, cuda_bf16=True, cpu_flags=AVX2), "bf16"),  # A100, H100, L4...
        (Hardware(cuda=True, cuda_bf16=False, cpu_flags=AVX2 | {"amx_bf16"}), "fp32"),  # V100, T4
        (Hardware(cuda=False, cuda_bf16=False, cpu_flags=AVX2 | {"avx512_bf16"}), "bf16"),
        (Hardware(cuda=False, cuda_bf16=False, cpu_flags=AVX2 | {"amx_bf16"}), "bf16"),
        (Hardware(cuda=False, cuda_bf16=False, cpu_flags=AVX2 | {"avx512f"}), "fp32"),
        (Hardware(cuda=False, cuda_bf16=False, cpu_flags=AVX2), "fp32"),  # these CI machines
    ],
)
def test_auto_precision_per_hardware(hardware, expected):
    assert auto_precision(hardware) == expected
    assert resolve_precision("auto", hardware) == expected


def test_explicit_dtypes_in_either_spelling():
    assert {resolve_precision(d) for d in ("bf16", "bfloat16")} == {"bf16"}
    assert {resolve_precision(d) for d in ("fp32", "float32")} == {"fp32"}
    with pytest.raises(ValueError, match="unknown dtype 'fp16'"):
        resolve_precision("fp16")


@pytest.mark.parametrize(
    ("flags", "engine_dtype"), [(AVX2, "float32"), (AVX2 | {"amx_bf16"}, "bfloat16")]
)
def test_training_and_serving_share_the_rule(monkeypatch, flags, engine_dtype):
    from gemlora.serve.engine import EngineConfig, build_command
    from gemlora.train.model import resolve_dtype

    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls: Hardware(False, False, flags)))
    command = build_command(EngineConfig(base="gemma-3-270m"), resolve_base("gemma-3-270m"))
    assert command[command.index("--dtype") + 1] == engine_dtype
    assert resolve_dtype("auto") == {"float32": "fp32", "bfloat16": "bf16"}[engine_dtype]
    pinned = build_command(
        EngineConfig(base="gemma-3-270m", dtype="bfloat16"), resolve_base("gemma-3-270m")
    )
    assert pinned[pinned.index("--dtype") + 1] == "bfloat16"


def test_this_machine_is_detected():
    hardware = Hardware.detect()
    assert auto_precision() == auto_precision(hardware)
    if not hardware.cuda and not hardware.cpu_flags & {"avx512_bf16", "amx_bf16"}:
        assert auto_precision() == "fp32"
