"""Verify a just-registered version on a running engine (`output.verify`).

When an engine serving this base's family answers at `output.verify.engine_url` (the jobs API
always points at its own), PEFT + transformers and the engine answer the same held-out prompts,
with the run's held-out images on a multimodal base, and the result is recorded on the version
(`gemlora.verify`), before `promote_if` looks at it. No engine there: the version stays
unverified, and the run says so. A check that breaks (an exception inside the verifier) is
recorded on the version as `error` with its reason; by default neither is promoted.
"""

from __future__ import annotations

from gemlora.adapters.verification_record import Verification
from gemlora.run_events import CheckpointRegistered, Unverified, VerificationError, Verified
from gemlora.rundir import ProgressLog
from gemlora.train.config import TrainConfig


def verify_registered(
    config: TrainConfig, registry, version: int, data, progress: ProgressLog
) -> Verification | None:
    """Verify the final version, then (`output.verify.checkpoints`) the run's checkpoint
    versions; returns the final version's verification, or None when no engine serving the
    base was reachable. An error verifying the final version is raised (the caller records it);
    one verifying a checkpoint is recorded on that version and the others are still checked."""
    from gemlora.adapters.compat import lookup_base
    from gemlora.adapters.fidelity_check import Verifier, engine_base, record_error

    settings = config.output.verify
    if settings.engine_url is None:
        return None
    served = engine_base(settings.engine_url)
    if served is not None and settings.engine_base is not None:
        served = settings.engine_base
    trained, engine_spec = lookup_base(config.base.model), lookup_base(served or "")
    if served is None or engine_spec is None or trained is None:
        reason = f"no engine of a known base at {settings.engine_url}"
        progress.write(Unverified(reason=reason))
        return None
    if engine_spec.family != trained.family:
        reason = (
            f"the engine at {settings.engine_url} serves {served}, not a base of the "
            f"{trained.family} family"
        )
        progress.write(Unverified(reason=reason))
        return None
    verifier = Verifier(
        settings.engine_url,
        engine_spec,
        image_prompts=held_out_image_prompts(data.eval, settings.image_prompts),
        tokens=settings.tokens,
        dtype=settings.dtype,
        tolerance=settings.tolerance,
    )
    final = _verify(verifier, registry, config.output.name, version, progress)
    if settings.checkpoints:
        for checkpoint in checkpoint_versions(progress):
            try:
                _verify(verifier, registry, config.output.name, checkpoint, progress)
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
                recorded = record_error(registry, config.output.name, checkpoint, reason, served)
                progress.write(
                    VerificationError(version=checkpoint, reason=reason, recorded=recorded)
                )
    return final


def checkpoint_versions(progress: ProgressLog) -> list[int]:
    """The versions this run registered for its checkpoints (before a pause or a restart too)."""
    return [e.version for e in progress.read() if isinstance(e, CheckpointRegistered)]


def _verify(verifier, registry, name: str, version: int, progress: ProgressLog) -> Verification:
    verification = verifier.verify(registry, f"{name}/{version}").verification()
    progress.write(Verified(version=version, **verification.model_dump()))
    return verification


def held_out_image_prompts(examples, count: int) -> list:
    """Up to `count` image prompts from held-out examples (chat, preference or prompt): each
    one's first user turn with an image, as its text and first image."""
    from gemlora.adapters.fidelity_check import VerifyPrompt
    from gemlora.data import PreferenceExample, PromptExample
    from gemlora.data.example import ImagePart

    prompts = []
    for example in examples:
        if isinstance(example, PreferenceExample | PromptExample):
            example = example.prompt_example()
        turn = next((m for m in example.messages if m.role == "user"), None)
        images = [part for part in (turn.content if turn else ()) if isinstance(part, ImagePart)]
        if images and len(prompts) < count:
            image = example.images[images[0].index].to_pil()
            text = turn.text or "Describe this image."
            prompts.append(VerifyPrompt(text, image, f"held out: {example.source or 'eval'}"))
    return prompts
