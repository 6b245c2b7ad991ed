"""`promote_if.gate`: the new version is promoted only when it is better with confidence.

After verification, the new version (`NAME/VERSION`) and what holds the alias (`NAME/N`, or the
engine's base when nothing does) answer the run's held-out prompts on the verifying engine,
greedily and at once (the engine batches them); `eval.graders` grade every answer. The gate
passes when, on the deciding grader, the paired bootstrap interval of the difference lies above
`margin`, and no other grader's mean falls by more than `tolerance`. The whole eval is an MLflow
GenAI evaluation (traces with assessments); the decision is a `gemlora.eval` tag on the version
and an `eval_gate` progress event (a job's events say it), and the alias moves only on a pass.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from gemlora.adapters.eval_record import EVAL_TAG
from gemlora.evals.stats import Comparison
from gemlora.run_events import EvalGate
from gemlora.rundir import ProgressLog
from gemlora.train.config import EvalGate as GateRule
from gemlora.train.config import TrainConfig


class GateDecision(BaseModel):
    version: int
    against: str
    grader: str
    passed: bool
    reason: str
    comparisons: list[Comparison]
    means: dict[str, dict[str, float | None]]  # grader -> {"candidate": ..., "against": ...}
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None

    def deciding(self) -> Comparison | None:
        return next((c for c in self.comparisons if c.grader == self.grader), None)

    def tag(self) -> str:
        """The `gemlora.eval` tag: what `adapters show` and /v1/models show. Per grader: both
        means, the difference with its interval, wins/ties/losses."""
        graders = {
            grader: {"candidate": means["candidate"], "against": means["against"]}
            for grader, means in self.means.items()
        }
        for c in self.comparisons:
            graders.setdefault(c.grader, {}).update(
                difference=round(c.difference, 4),
                interval=[round(c.low, 4), round(c.high, 4)],
                wins_ties_losses=[c.wins, c.ties, c.losses],
            )
        summary = {
            "against": self.against,
            "grader": self.grader,
            "passed": self.passed,
            "reason": self.reason,
            "graders": graders,
            "mlflow_run_id": self.mlflow_run_id,
        }
        if (deciding := graders.get(self.grader)) and "interval" in deciding:
            summary |= {"difference": deciding["difference"], "interval": deciding["interval"]}
        return json.dumps(summary)


def decide(rule: GateRule, comparisons: list[Comparison]) -> tuple[bool, str]:
    """The gate's verdict on comparisons of the candidate against the holder."""
    deciding = next((c for c in comparisons if c.grader == rule.grader), None)
    if deciding is None:
        return False, f"nothing was graded on {rule.grader!r} for both models"
    interval = f"{deciding.difference:+.3f} [{deciding.low:+.3f}, {deciding.high:+.3f}]"
    if deciding.low <= rule.margin:
        return False, f"{rule.grader} {interval}: the interval is not above {rule.margin:g}"
    for other in comparisons:
        if other.grader != rule.grader and other.difference < -rule.tolerance:
            return False, (
                f"{rule.grader} {interval} is better, but {other.grader} fell by "
                f"{-other.difference:.3f} (tolerance {rule.tolerance:g})"
            )
    return True, f"{rule.grader} {interval}, {deciding.wins}/{deciding.ties}/{deciding.losses}"


def run_gate(
    config: TrainConfig, registry, version: int, held_out: list, progress: ProgressLog
) -> GateDecision:
    """Evaluate `version` against the alias's holder, record the decision, and move the alias
    when it passes (only if its verification allows promotion at all)."""
    from gemlora.adapters.verification_record import allows_promotion

    rule, name = config.output.promote_if, config.output.name
    details = registry.show(name)
    tags = next(v.tags for v in details.versions if v.version == version)
    if not allows_promotion(tags, rule.verification):
        reason = f"its verification does not allow promotion (rule: {rule.verification})"
        decision = GateDecision(
            version=version, against="-", grader=rule.gate.grader, passed=False,
            reason=reason, comparisons=[], means={},
        )  # fmt: skip
    else:
        holder = details.aliases.get(rule.to)
        decision = evaluate_against(config, version, holder, held_out)
    record(registry, name, decision, progress)
    if decision.passed:
        registry.set_alias(name, rule.to, version)
    return decision


def evaluate_against(
    config: TrainConfig, version: int, holder: int | None, held_out: list
) -> GateDecision:
    """The eval: `NAME/version` against `NAME/holder` (or the engine's base), on the engine."""
    from gemlora.adapters.fidelity_check import engine_base
    from gemlora.evals.items import held_out_items
    from gemlora.evals.run import run_eval
    from gemlora.evals.tracking import record_eval

    name, gate = config.output.name, config.output.promote_if.gate
    engine_url = config.output.verify.engine_url
    candidate = f"{name}/{version}"
    against = f"{name}/{holder}" if holder is not None else engine_base(engine_url)
    items = held_out_items(held_out)[: config.eval.gate_items]
    spec = gate_spec(config, candidate, against)
    result = record_eval(spec, items, run_eval(spec, items))
    passed, reason = decide(gate, result.comparisons)
    scored, baseline = result.of(candidate), result.of(against)
    means = {
        grader: {"candidate": scored.mean(grader), "against": baseline.mean(grader)}
        for grader in scored.scores
    }
    return GateDecision(
        version=version,
        against=against,
        grader=gate.grader,
        passed=passed,
        reason=reason,
        comparisons=result.comparisons,
        means=means,
        mlflow_run_id=result.mlflow_run_id,
        mlflow_url=result.mlflow_url,
    )


def gate_spec(config: TrainConfig, candidate: str, against: str):
    """The eval spec of the gate: greedy answers of `eval.max_new_tokens` on the engine."""
    from gemlora.evals.spec import Bootstrap, Endpoint, EvalSpec, Sampling, Tracking

    gate = config.output.promote_if.gate
    return EvalSpec(
        name=f"gate: {candidate} vs {against}",
        endpoint=Endpoint(url=f"{config.output.verify.engine_url}/v1", api_key_env=None),
        models=[against, candidate],
        baseline=against,
        sampling=Sampling(max_tokens=config.eval.max_new_tokens, temperature=0),
        graders=config.eval.graders,
        bootstrap=Bootstrap(samples=gate.samples, confidence=gate.confidence),
        tracking=Tracking(
            tracking_uri=config.output.resolved_tracking_uri(), experiment=config.output.experiment
        ),
    )


def record(registry, name: str, decision: GateDecision, progress: ProgressLog) -> None:
    registry.set_version_tag(name, decision.version, EVAL_TAG, decision.tag())
    deciding = decision.deciding()
    progress.write(
        EvalGate(
            version=decision.version,
            against=decision.against,
            grader=decision.grader,
            difference=deciding.difference if deciding else None,
            low=deciding.low if deciding else None,
            high=deciding.high if deciding else None,
            passed=decision.passed,
            reason=decision.reason,
            mlflow_run_id=decision.mlflow_run_id,
        )
    )
