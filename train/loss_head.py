"""The loss head of a run: TRL's fused LM head, on labelled positions only, with a CPU kernel.

TRL's SFTTrainer computes the loss through its fused LM head
(`trl.trainer.utils.add_fused_lm_head`): the model body runs as usual, then the hidden states go
through the head without ever building the whole `(batch, length, vocab)` logits. Two things
make it slow on a CPU, where a Gemma 3 head position (262,144 words) costs about 1 GFLOP, more
than the LoRA-adapted body of the 270M spends on a token:

1. Positions without a label (the prompt, padding) need no head at all. TRL drops them only
   where its Triton kernels run (CUDA, XPU): its private gate `_use_triton`, read from
   `trl.trainer.utils` at every forward, decides. The compact path is TRL's own code and gives
   the same log-probabilities; it is gated because devices that compile per shape (Neuron) pay
   a recompilation for every new number of rows. CPUs and GPUs do not, so the gate opens.
2. Without Triton, TRL's kernel (`_ChunkedLogProbFunction`) folds vocabulary tiles with a dozen
   torch passes each and recomputes every tile in backward: three head matmuls per position.
   On a CPU `CpuLabelledLogProbs` replaces it: it scans the vocabulary in tiles once per chunk of
   positions with a running maximum (the online softmax), and accumulates each
   log-probability's gradient with respect to its hidden state in the same pass (one more
   matmul per tile), so backward only scales those rows: two head matmuls per position, no
   `[positions, vocabulary]` logits in memory, and a head stored in bf16 (an fp32 run keeps
   the frozen embedding in the checkpoint's bf16, `gemlora.train.bf16_embedding`) upcast a tile
   at a time. Its outputs and gradients equal TRL's (tests/train/test_train_loss_head.py).

Both are private names of TRL 1.16: `pyproject.toml` pins TRL to that minor version, and the
tests fail if TRL moves either, so an upgrade fails loudly instead of training slowly or wrongly.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch

FUSED_HEAD_MODULE = "trl.trainer.utils"
GATE = "_use_triton"
KERNEL = "_ChunkedLogProbFunction"
# Positions scanned together over the vocabulary: each tile of the head is read (and upcast)
# once per chunk, and a chunk holds a few `[positions, tile]` buffers.
TOKENS_PER_CHUNK = 256
# Words per tile of the head: 2,048 x 640 fp32 weights stay in a CPU's cache (faster than
# larger tiles here), and softmax sums over 2,048 words keep TRL's accuracy.
VOCABULARY_TILE = 2048
# What TRL's kernel returns, in its order (those not asked for are None).
ALL_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class LossHeadUnsupported(RuntimeError):
    """The installed TRL no longer has the names this module relies on."""


@contextlib.contextmanager
def fast_loss_head() -> Iterator[None]:
    """Inside the block, TRL's fused LM head projects only the positions that have a label, and
    does so with `CpuLabelledLogProbs` where the hidden states are on a CPU."""
    module = importlib.import_module(FUSED_HEAD_MODULE)
    gate, kernel = getattr(module, GATE, None), getattr(module, KERNEL, None)
    if gate is None or kernel is None:
        raise LossHeadUnsupported(
            f"{FUSED_HEAD_MODULE} has no {GATE} or {KERNEL} in this TRL version: gemlora's loss "
            "head supports the TRL versions pinned in pyproject.toml; install one of those"
        )
    setattr(module, GATE, _compact_on_every_device)
    setattr(module, KERNEL, _OnCpu(kernel))
    try:
        yield
    finally:
        setattr(module, GATE, gate)
        setattr(module, KERNEL, kernel)


def _compact_on_every_device(_device) -> bool:
    return True


class _OnCpu:
    """TRL's kernel, except for a frozen head on a CPU: there, `CpuLabelledLogProbs`."""

    def __init__(self, trl_kernel) -> None:
        self.trl_kernel = trl_kernel

    def apply(self, hidden, weight, bias, *args):
        trainable_head = weight.requires_grad or (bias is not None and bias.requires_grad)
        if hidden.device.type != "cpu" or trainable_head:
            return self.trl_kernel.apply(hidden, weight, bias, *args)
        return CpuLabelledLogProbs.apply(hidden, weight, bias, *args)


class CpuLabelledLogProbs(torch.autograd.Function):
    """TRL's `_ChunkedLogProbFunction` contract for a frozen head: per-position log-probability
    of `targets` under `hidden @ weight.T (+ bias)` (scaled, soft-capped, divided by the
    temperature as TRL does), plus the optional outputs TRL asks for. Only the log-probabilities
    carry a gradient, and only to `hidden`. The head may be stored in another dtype than the
    hidden states (bf16 for an fp32 run): it is upcast one vocabulary tile at a time."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        bias: torch.Tensor | None,  # [V]
        targets: torch.Tensor,  # [N]
        temperature: float,
        _chunk_size: int,  # TRL's vocabulary tile; ours is VOCABULARY_TILE
        softcap: float | None,
        logit_scale: float,
        outputs: tuple[str, ...],
    ):
        ctx.set_materialize_grads(False)  # unused outputs (the entropy) get None, not zeros
        transform = _Transform(logit_scale, softcap, temperature)
        want_grad = hidden.requires_grad
        results = [
            _ChunkScan(hidden[rows], targets[rows], transform, want_grad, outputs).run(weight, bias)
            for rows in _chunks(hidden.shape[0])
        ]
        merged = {name: torch.cat([r[name] for r in results]) for name in results[0]}
        hidden_grad = merged.pop("hidden_grad", None)
        ctx.save_for_backward(hidden_grad)
        no_gradient = ("log_sum_sq_probs", "mean_logits", "is_top1")
        ctx.mark_non_differentiable(*(merged[name] for name in no_gradient if name in merged))
        return tuple(
            merged.get(name)
            for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
        )

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_unused):
        if grad_entropy is not None:
            raise NotImplementedError("CpuLabelledLogProbs: the entropy has no gradient here")
        (hidden_grad,) = ctx.saved_tensors
        grad = None
        if grad_log_probs is not None and hidden_grad is not None:
            grad = hidden_grad * grad_log_probs.to(hidden_grad.dtype).unsqueeze(-1)
        return grad, None, None, None, None, None, None, None, None


def _chunks(count: int) -> Iterator[slice]:
    """Slices of at most TOKENS_PER_CHUNK positions; one empty slice when there are none (a
    batch without labels still returns a differentiable result)."""
    for start in range(0, max(count, 1), TOKENS_PER_CHUNK):
        yield slice(start, min(start + TOKENS_PER_CHUNK, count))


class _Transform:
    """TRL's logit transform (scale, soft cap, temperature) and its derivative; the identity
    (derivative None) for Gemma 3, which has no soft cap since Gemma 2."""

    def __init__(self, logit_scale: float, softcap: float | None, temperature: float) -> None:
        self.scale, self.softcap, self.temperature = logit_scale, softcap, temperature
        self.identity = logit_scale == 1 and softcap is None and temperature == 1

    def __call__(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.identity:
            return raw, None
        scaled = raw * self.scale
        derivative = self.scale / self.temperature
        if self.softcap is None:
            return scaled / self.temperature, torch.full_like(raw, derivative)
        capped = torch.tanh(scaled / self.softcap)
        return self.softcap * capped / self.temperature, derivative * (1 - capped * capped)


class _ChunkScan:
    """One chunk of positions scanned over the vocabulary a tile at a time with a running
    maximum (the online softmax): sums of exponentials, and of what the optional outputs and
    the gradient need, are rescaled whenever the maximum grows. No `[positions, vocabulary]`
    buffer is ever built, and a head stored in bf16 is upcast one tile at a time."""

    def __init__(self, hidden, targets, transform: _Transform, want_grad: bool, outputs) -> None:
        count, width = hidden.shape
        self.hidden, self.targets, self.transform, self.outputs = (
            hidden,
            targets,
            transform,
            outputs,
        )
        zeros = hidden.new_zeros(count, dtype=torch.float32)
        self.top = torch.full_like(zeros, -torch.inf)  # running maximum logit
        self.total = zeros.clone()  # sum of exp(logit - top)
        self.weighted = zeros.clone()  # sum of exp(logit - top) * logit (entropy)
        self.squares = zeros.clone()  # sum of exp(2 (logit - top))  (log_sum_sq_probs)
        self.logit_sum = zeros.clone()  # mean_logits
        self.best = torch.full_like(zeros, -torch.inf)  # is_top1: the first maximum's word
        self.best_word = torch.zeros_like(targets)
        # sum of exp(logit - top) * d logit / d hidden: the softmax part of the gradient
        self.grad_sum = hidden.new_zeros(count, width) if want_grad else None

    def run(self, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
        vocabulary = weight.shape[0]
        for start in range(0, vocabulary, VOCABULARY_TILE):
            words = slice(start, min(start + VOCABULARY_TILE, vocabulary))
            tile = weight[words].to(self.hidden.dtype)
            self._add_tile(start, tile, None if bias is None else bias[words])
        return self._results(weight, bias, vocabulary)

    def _add_tile(self, start: int, tile: torch.Tensor, bias: torch.Tensor | None) -> None:
        # [t, H] @ [H, n], read transposed: faster on a CPU than [n, H] @ [H, t] for few rows
        raw = (tile @ self.hidden.t()).t().float()
        if bias is not None:
            raw = raw + bias.float()
        logits, slope = self.transform(raw)
        top = torch.maximum(self.top, logits.amax(-1))
        rescale = torch.exp(self.top - top)
        exps = torch.sub(logits, top.unsqueeze(-1)).exp_()
        self.total = self.total * rescale + exps.sum(-1)
        if "entropy" in self.outputs:
            self.weighted = self.weighted * rescale + torch.linalg.vecdot(exps, logits)
        if "log_sum_sq_probs" in self.outputs:
            self.squares = self.squares * rescale**2 + torch.linalg.vecdot(exps, exps)
        if "mean_logits" in self.outputs:
            self.logit_sum += logits.sum(-1)
        if "is_top1" in self.outputs:  # a tie with an earlier word keeps the earlier word
            tile_best, tile_word = logits.max(-1)
            better = tile_best > self.best
            self.best = torch.where(better, tile_best, self.best)
            self.best_word = torch.where(better, tile_word + start, self.best_word)
        if self.grad_sum is not None:
            weights = exps if slope is None else exps * slope
            self.grad_sum.mul_(rescale.unsqueeze(-1).to(tile.dtype))
            self.grad_sum.addmm_(weights.to(tile.dtype), tile)
        self.top = top

    def _results(self, weight, bias, vocabulary: int) -> dict[str, torch.Tensor]:
        target_rows = weight[self.targets].to(self.hidden.dtype)
        raw = torch.linalg.vecdot(self.hidden, target_rows).float()
        if bias is not None:
            raw = raw + bias[self.targets].float()
        target_logit, target_slope = self.transform(raw)
        log_z = self.top + torch.log(self.total)
        results = {"log_probs": target_logit - log_z}
        if "entropy" in self.outputs:
            results["entropy"] = log_z - self.weighted / self.total
        if "log_sum_sq_probs" in self.outputs:
            results["log_sum_sq_probs"] = torch.log(self.squares) - 2 * torch.log(self.total)
        if "mean_logits" in self.outputs:
            results["mean_logits"] = self.logit_sum / vocabulary
        if "is_top1" in self.outputs:
            results["is_top1"] = self.best_word == self.targets
        if self.grad_sum is not None:
            # d log p(target) / d hidden = d logit_target / d hidden - E_softmax[d logit / d hidden]
            if target_slope is not None:
                target_rows = target_rows * target_slope.unsqueeze(-1).to(target_rows.dtype)
            total = self.total.unsqueeze(-1).to(self.grad_sum.dtype)
            results["hidden_grad"] = target_rows - self.grad_sum / total
        return results
