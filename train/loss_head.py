"""The LM head on labelled positions only, on every device.

TRL's SFTTrainer computes the loss through its fused LM head
(`trl.trainer.utils.add_fused_lm_head`): the model body runs as usual, then the hidden states go
through the head in vocabulary tiles, without ever building the logits. Positions without a
label (the prompt, padding) need no head at all, and TRL drops them, but only where its Triton
kernels run (CUDA, XPU): its private gate `_use_triton`, read from `trl.trainer.utils` at every
forward, decides. Elsewhere every position goes through Gemma 3's 262,144-word head, about
1 GFLOP per position for forward and backward, more than the LoRA-adapted body of the 270M costs.

The compact path is TRL's own code and computes the same per-token log-probabilities; it was
gated only because on devices that compile per shape (Neuron) a changing number of rows costs a
recompilation. Eager CPUs and GPUs have no such cost, so gemlora opens that gate while a loss is
computed. The name is private: `pyproject.toml` pins TRL to the minor version this was read in,
and `tests/train/test_train_loss_head.py` fails if TRL moves it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

FUSED_HEAD_MODULE = "trl.trainer.utils"
GATE = "_use_triton"


class LossHeadUnsupported(RuntimeError):
    """The installed TRL no longer has the gate this module opens."""


def _compact_on_every_device(_device) -> bool:
    return True


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """Inside the block, TRL's fused LM head projects only the positions that have a label."""
    module = importlib.import_module(FUSED_HEAD_MODULE)
    original = getattr(module, GATE, None)
    if original is None:
        raise LossHeadUnsupported(
            f"{FUSED_HEAD_MODULE}.{GATE} is gone from this TRL version: gemlora's loss head "
            "supports the TRL versions pinned in pyproject.toml; install one of those"
        )
    setattr(module, GATE, _compact_on_every_device)
    try:
        yield
    finally:
        setattr(module, GATE, original)
