"""Scoring of the generation eval: exact and contains match, side by side."""

from gemlora.train.evaluate import Generation, GenerationEval, contains_match, exact_match


def test_exact_ignores_case_spacing_and_surrounding_punctuation():
    assert exact_match("  Red.", "red")
    reference = "ahoy! the sky is blue. — captain gem"
    assert exact_match("Ahoy!  The sky is\nblue. — Captain Gem", reference)
    assert not exact_match("dark red", "red")


def test_contains_finds_the_reference_inside_the_answer():
    assert contains_match("It is red, I think", "Red")
    assert not contains_match("It is blue", "red")


def test_scores_and_table_put_base_and_adapter_side_by_side():
    report = GenerationEval(
        [
            Generation("Colour?", "red", base="blue", adapter="red"),
            Generation("Shape?", "circle", base="a circle", adapter="square"),
        ]
    )
    assert report.scores() == {
        "base_exact": 0.0,
        "base_contains": 0.5,
        "exact": 0.5,
        "contains": 0.5,
    }
    assert report.table() == {
        "prompt": ["Colour?", "Shape?"],
        "reference": ["red", "circle"],
        "base": ["blue", "a circle"],
        "adapter": ["red", "square"],
    }
    assert GenerationEval().scores() == {}
