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
# Positions whose logits exist at once: 32 x 262,144 fp32 logits are 32 MiB, and three such
# buffers live during a chunk. More rows barely speed up the matmul on a CPU.
TOKENS_PER_CHUNK = 32


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
            raw = (hidden[rows] @ weight.t()).float()
            if bias is not None:
                raw += bias.float()
            logits, slope = _transform(raw, logit_scale, softcap, temperature)
            log_softmax = torch.log_softmax(logits, dim=-1)
            target = targets[rows].unsqueeze(-1)
            log_probs[rows] = log_softmax.gather(-1, target).squeeze(-1)
            _optional_outputs(extra, rows, logits, log_softmax, targets[rows])
            if hidden_grad is not None:
                # d log p(target) / d logits = onehot(target) - softmax, through the transform
                dlogits = log_softmax.exp_().neg_()
                dlogits.scatter_add_(-1, target, torch.ones(target.shape))
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
    """TRL's logit transform (scale, soft cap, temperature) and its derivative."""
    scaled = raw * logit_scale
    derivative = logit_scale / temperature
    if softcap is None:
        return scaled / temperature, derivative
    capped = torch.tanh(scaled / softcap)
    return softcap * capped / temperature, derivative * (1 - capped * capped)


def _optional_outputs(extra: dict, rows: slice, logits, log_softmax, targets) -> None:
    if "entropy" in extra:
        extra["entropy"][rows] = -(log_softmax.exp() * log_softmax).sum(-1)
    if "log_sum_sq_probs" in extra:
        extra["log_sum_sq_probs"][rows] = torch.logsumexp(2 * log_softmax, dim=-1)
    if "mean_logits" in extra:
        extra["mean_logits"][rows] = logits.mean(-1)
    if "is_top1" in extra:
        # the first maximum, as TRL counts it: a tie with an earlier token is not a hit
        extra["is_top1"][rows] = logits.argmax(-1) == targets
