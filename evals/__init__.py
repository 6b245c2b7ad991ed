"""Graders in OpenAI's fine-tuning grader format: one implementation, for evaluation now and
for RL rewards later. The JSON a user writes for OpenAI works here unchanged.

    grader = validate_grader({"type": "text_similarity", "name": "close",
                              "evaluation_metric": "rouge_l",
                              "input": "{{sample.output_text}}", "reference": "{{item.answer}}"})
    result = grade(grader, sample={"output_text": "Paris"}, item={"answer": "Paris"})
    result.reward                                         # 1.0; GraderRunResponse in shape

    string_check, text_similarity   graders.py, similarity.py
    python                          python_grader.py   (a child interpreter, time/memory capped)
    score_model, label_model        judge.py           (the caller injects the judge model)
    multi                           formula.py         (an `ast`-checked formula, never eval)

A grader that cannot score a sample raises GraderError, never returns 0. Nothing here imports
torch or transformers at import time: the cosine metric loads them when first used.
"""

from gemlora.evals.errors import ErrorFlag, GraderError
from gemlora.evals.graders import (
    Grader,
    GraderModel,
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    parse_grader,
    validate_grader,
    validate_graders,
    walk,
)
from gemlora.evals.grading import GradeErrors, GradeMetadata, GradeResult, grade, grade_or_failure
from gemlora.evals.judge import Judge
from gemlora.evals.python_grader import PythonLimits
from gemlora.evals.templates import render

__all__ = [
    "ErrorFlag",
    "GradeErrors",
    "GradeMetadata",
    "GradeResult",
    "Grader",
    "GraderError",
    "GraderModel",
    "Judge",
    "LabelModelGrader",
    "MultiGrader",
    "PythonGrader",
    "PythonLimits",
    "ScoreModelGrader",
    "StringCheckGrader",
    "TextSimilarityGrader",
    "grade",
    "grade_or_failure",
    "parse_grader",
    "render",
    "validate_grader",
    "validate_graders",
    "walk",
]
