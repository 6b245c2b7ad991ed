"""Pausing a run: SIGUSR1 asks it to stop at the end of the current step with a checkpoint and
register nothing, so that `gemlora train --resume` continues it in the same MLflow run to the
same final step count. The jobs API's `POST /v1/fine_tuning/jobs/{id}/pause` sends it."""

from __future__ import annotations

import signal
import threading

from transformers import TrainerCallback

from gemlora.signals import PAUSE_SIGNAL


class TrainingPaused(BaseException):
    """The run stopped at `step` with a checkpoint, on request."""

    def __init__(self, step: int) -> None:
        super().__init__(f"paused at step {step}")
        self.step = step


class PauseOnSignal(TrainerCallback):
    """Turns PAUSE_SIGNAL into "save a checkpoint and stop" at the next step end."""

    def __init__(self) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(PAUSE_SIGNAL, self._request)

    def _request(self, _signum, _frame) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
        return control

    def paused(self, state) -> bool:
        """True when training stopped early for a pause (a request after the last step is too
        late: the run completes)."""
        return self.requested and state.global_step < state.max_steps
