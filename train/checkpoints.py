"""Checkpoints you can call: each checkpoint the Trainer saves is registered as a version of the
run's adapter (`output.register_checkpoints`), tagged with its step and given no alias, so it is
served as `NAME/VERSION` while training goes on, like any adapter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from gemlora.adapters import AdapterError
from gemlora.run_events import CheckpointRegistered, CheckpointUnregistered


class CheckpointRegistrar(TrainerCallback):
    def __init__(
        self, registry, name: str, run_id: str, metadata: Callable[..., object], progress
    ) -> None:
        self.registry = registry
        self.name = name
        self.run_id = run_id
        self.metadata = metadata  # checkpoint_step=... -> AdapterMetadata
        self.progress = progress

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        step = state.global_step
        path = Path(args.output_dir) / f"checkpoint-{step}"
        try:
            version = self.registry.register(
                path,
                self.name,
                self.metadata(checkpoint_step=step),
                run_id=self.run_id,
                alias=None,  # the run's alias is for its final adapter
            )
        except AdapterError as error:  # training goes on; the checkpoint stays on disk
            self.progress.write(CheckpointUnregistered(step=step, error=str(error)))
            return
        self.progress.write(CheckpointRegistered(step=step, name=self.name, version=version))
