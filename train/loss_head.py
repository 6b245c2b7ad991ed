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
   On a CPU `CpuLabelledLogProbs` replaces it: it builds the logits of a few positions at a
   time, takes their log-softmax once, and computes each log-probability's gradient with
   respect to its hidden state right there (one more matmul), so backward only scales those
   rows: two head matmuls per position, and at most `TOKENS_PER_CHUNK` positions of logits in
   memory at once. Its outputs and gradients equal TRL's (tests/train/test_train_loss_head.py).

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
# Positions whose logits exist at once: 64 x 262,144 fp32 logits are 64 MiB, and two such
# buffers live during a chunk. Fewer rows make the head matmul much slower on a CPU.
TOKENS_PER_CHUNK = 64


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
    carry a gradient, and only to `hidden`."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        bias: torch.Tensor | None,  # [V]
        targets: torch.Tensor,  # [N]
        temperature: float,
        _chunk_size: int,  # TRL's vocabulary tile; here whole rows of logits are built
        softcap: float | None,
        logit_scale: float,
        outputs: tuple[str, ...],
    ):
        ctx.set_materialize_grads(False)  # unused outputs (the entropy) get None, not zeros
        count = hidden.shape[0]
        log_probs = hidden.new_empty(count, dtype=torch.float32)
        extra = {
            name: hidden.new_empty(count, dtype=torch.bool if name == "is_top1" else torch.float32)
            for name in outputs
            if name != "log_probs"
        }
        hidden_grad = torch.empty_like(hidden) if hidden.requires_grad else None
        weight = weight.to(hidden.dtype)  # no copy: the head is frozen in the compute dtype
        for start in range(0, count, TOKENS_PER_CHUNK):
            rows = slice(start, min(start + TOKENS_PER_CHUNK, count))
            # [V, H] @ [H, n], read transposed: faster on a CPU than [n, H] @ [H, V] for few rows
            raw = (weight @ hidden[rows].t()).t().float().contiguous()
            if bias is not None:
                raw += bias.float()
            logits, slope = _transform(raw, logit_scale, softcap, temperature)
            del raw
            softmax, log_z = _softmax(logits)
            target = targets[rows].unsqueeze(-1)
            log_probs[rows] = logits.gather(-1, target).squeeze(-1) - log_z
            _optional_outputs(extra, rows, logits, softmax, log_z, targets[rows])
            del logits  # two [n, V] buffers at a time
            if hidden_grad is not None:
                # d log p(target) / d logits = onehot(target) - softmax, through the transform
                dlogits = softmax.neg_()
                dlogits.scatter_add_(-1, target, torch.ones(target.shape))
                if slope is not None:
                    dlogits.mul_(slope)
                hidden_grad[rows] = dlogits.to(hidden.dtype) @ weight
        ctx.save_for_backward(hidden_grad)
        no_gradient = ("log_sum_sq_probs", "mean_logits", "is_top1")
        ctx.mark_non_differentiable(*(extra[name] for name in no_gradient if name in extra))
        return (
            log_probs,
            extra.get("entropy"),
            extra.get("log_sum_sq_probs"),
            extra.get("mean_logits"),
            extra.get("is_top1"),
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


def _transform(raw, logit_scale: float, softcap: float | None, temperature: float):
    """TRL's logit transform (scale, soft cap, temperature) and its derivative; None for the
    identity, which Gemma 3 uses (no soft cap since Gemma 2)."""
    if logit_scale == 1 and softcap is None and temperature == 1:
        return raw, None
    scaled = raw * logit_scale
    derivative = logit_scale / temperature
    if softcap is None:
        return scaled / temperature, derivative
    capped = torch.tanh(scaled / softcap)
    return softcap * capped / temperature, derivative * (1 - capped * capped)


def _softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the vocabulary and its log normaliser."""
    top = logits.amax(-1)
    exps = torch.sub(logits, top.unsqueeze(-1)).exp_()
    total = _sum_in_tiles(exps)
    exps.div_(total.unsqueeze(-1))
    return exps, top + torch.log(total)


def _sum_in_tiles(values: torch.Tensor, tile: int = 4096) -> torch.Tensor:
    """Row sums in two levels, tiles then the tiles' sums. One fp32 running sum over 262,144
    exponentials is off by up to 1e-4 in the log-probabilities (TRL's tiled sums: 5e-6), enough
    to move a training curve by a percent within ten steps."""
    rows, width = values.shape
    whole = width // tile * tile
    tiled = values[:, :whole].reshape(rows, -1, tile).sum(-1).sum(-1)
    return tiled + values[:, whole:].sum(-1)


def _optional_outputs(extra: dict, rows: slice, logits, softmax, log_z, targets) -> None:
    """Fill the outputs TRL asked for from one chunk's logits and softmax."""
    if "entropy" in extra:  # -sum p log p, with log p = logits - log_z
        extra["entropy"][rows] = log_z - torch.linalg.vecdot(softmax, logits)
    if "log_sum_sq_probs" in extra:
        extra["log_sum_sq_probs"][rows] = torch.log(torch.linalg.vecdot(softmax, softmax))
    if "mean_logits" in extra:
        extra["mean_logits"][rows] = logits.mean(-1)
    if "is_top1" in extra:
        # the first maximum, as TRL counts it: a tie with an earlier word is not a hit
        extra["is_top1"][rows] = logits.argmax(-1) == targets
