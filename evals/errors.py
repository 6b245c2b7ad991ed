"""The one error every grader raises, tagged with the OpenAI error flag it corresponds to, so
that a caller (the gateway, an RL reward loop) can report it in `GraderRunResponse` shape."""

from __future__ import annotations

from typing import Literal

# The boolean fields of OpenAI's `GraderRunResponse.metadata.errors` that a failure can set.
ErrorFlag = Literal[
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
]


class GraderError(ValueError):
    """A grader that is malformed, or that could not score a sample. Never a silent 0: a score
    of 0 means the sample was graded and failed, this means it was not graded at all."""

    def __init__(self, message: str, flag: ErrorFlag = "other_error", param: str | None = None):
        super().__init__(message)
        self.flag: ErrorFlag = flag
        self.param = param  # the grader field at fault (`graders.a.operation`), when one is
