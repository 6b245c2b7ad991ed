"""Pausing a run: PAUSE_SIGNAL (`gemlora.signals`), or a pause request in the run directory
(`gemlora.rundir.request_pause`, what the jobs API's `POST /v1/fine_tuning/jobs/{id}/pause`
writes), asks it to stop with a checkpoint and register nothing, so that `gemlora train
--resume` continues it in the same MLflow run to the same final step count.

A pause is honoured at any moment of a run: one that arrives while data and model load takes
effect once the MLflow run exists, before the first step (nothing to checkpoint: the resume
starts from step 0, or from the checkpoint it resumed from); later ones at the end of the
current step. In a multi-process run every rank stops at the same step.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from gemlora.rundir import clear_pause_request, pause_requested_in
from gemlora.signals import pause_requested


class TrainingPaused(BaseException):
    """The run stopped at `step` on request (with a checkpoint, when it had trained)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"paused at step {step}")
        self.step = step


def asked_to_pause(run_dir: Path) -> bool:
    return pause_requested() or pause_requested_in(run_dir)


def pause_if_requested(run_dir: Path, step: int) -> None:
    """Between the phases of a run: stop here if a pause was asked for."""
    if asked_to_pause(run_dir):
        raise TrainingPaused(step)


def forget_pause_request(run_dir: Path) -> None:
    """The run paused: the request is done (a resumed run must not pause again at once)."""
    clear_pause_request(run_dir)


class PauseOnRequest(TrainerCallback):
    """Turns a pause request into "save a checkpoint and stop" at the next step end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        asked = asked_to_pause(self.run_dir)
        if state.global_step < state.max_steps and _any_rank_paused(asked, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.stopped = True
        return control

    def paused(self, state) -> bool:
        """True when training stopped early for a pause (a request after the last step is too
        late: the run completes)."""
        return self.stopped


def _any_rank_paused(requested: bool, device) -> bool:
    """Whether any process of the run was asked to pause: the signal may reach only one of
    them, and all must stop at the same step (saving a checkpoint is collective)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return requested
    import torch

    flag = torch.tensor([1 if requested else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
