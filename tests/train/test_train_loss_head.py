"""Training speed without changing the maths: TRL's fused LM head on labelled positions only (with
gemlora's CPU kernel), and padding-free batches for text-only bases. Each gives the loss and LoRA
gradients of the plain computation, on a small random Gemma 3 text model with the real
262,144-word vocabulary and the 270M's tokenizer."""

from __future__ import annotations

import inspect

import pytest
import torch
from train_helpers import example, text, with_image

from gemlora.train import Gemma3ChatCollator
from gemlora.train.collator import IGNORE_INDEX
from gemlora.train.dataset import to_hf_dataset
from gemlora.train.loss_head import (
    FUSED_HEAD_MODULE,
    GATE,
    KERNEL,
    TOKENS_PER_CHUNK,
    VOCABULARY_TILE,
    CpuLabelledLogProbs,
    fast_loss_head,
)

ROWS = [
    example(text("user", "Why is the sky blue?"), text("assistant", "Ahoy! Light scatters.", 1)),
    example(
        text("system", "Be brief."),
        text("user", "Name a planet with rings, and say why they shine in sunlight."),
        text("assistant", "Saturn. — Captain Gem", 1),
    ),
    example(text("user", "2+2?"), text("assistant", "4", 1), text("user", "And 3+3?")),
]


@pytest.fixture(scope="module")
def tokenizer(built_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built_models["gemma-3-270m"])


@pytest.fixture(scope="module")
def model(tokenizer):
    """A 2-layer random Gemma 3 text model over the 270M's vocabulary, with TRL's fused head
    and a LoRA whose B matrices are non-zero (so that every LoRA weight has a gradient)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,  # shorter than the batch: packing must hold with sliding layers too
        layer_types=["sliding_attention", "full_attention"],
        attn_implementation="sdpa",
    )
    base = Gemma3ForCausalLM(config).float().eval()
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    return peft_model


def padded_batch(tokenizer) -> dict:
    rows = list(to_hf_dataset(ROWS, multimodal=False))
    return Gemma3ChatCollator(tokenizer)(rows)


def loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch, fused_lm_head=True).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def assert_same(first, second) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(grad, grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_trl_still_has_the_names_gemlora_relies_on():
    """Pins the TRL behaviour `gemlora.train.loss_head` relies on: the fused forward asks
    `trl.trainer.utils._use_triton(device)` whether to drop unlabelled positions (no, on a
    CPU) and scores them with `trl.trainer.utils._ChunkedLogProbFunction`, both looked up at
    call time. A TRL release that moves either fails here, not silently slower or wrong."""
    import importlib

    from trl.trainer import utils

    module = importlib.import_module(FUSED_HEAD_MODULE)
    assert module is utils
    source = inspect.getsource(utils.add_fused_lm_head)
    assert f"compact = {GATE}(hidden_states.device)" in source
    assert f"per_token = {KERNEL}.apply(" in source
    gate, kernel = getattr(utils, GATE), getattr(utils, KERNEL)
    assert gate(torch.device("cpu")) is False
    with fast_loss_head():
        assert getattr(utils, GATE)(torch.device("cpu")) is True
        assert getattr(utils, KERNEL) is not kernel
    assert (getattr(utils, GATE), getattr(utils, KERNEL)) == (gate, kernel)  # restored


def test_head_runs_on_labelled_positions_only(model, tokenizer, monkeypatch):
    from trl.trainer import utils

    batch = padded_batch(tokenizer)
    rows_seen = []

    def spy(kernel, name: str):
        original = kernel.apply

        def apply(hidden, *args):
            rows_seen.append((name, hidden.shape[0]))
            return original(hidden, *args)

        monkeypatch.setattr(kernel, "apply", apply)

    spy(utils._ChunkedLogProbFunction, "trl")
    spy(CpuLabelledLogProbs, "gemlora")
    model(**batch, fused_lm_head=True)
    with fast_loss_head():
        model(**batch, fused_lm_head=True)
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    rows, length = batch["input_ids"].shape
    assert rows_seen == [("trl", rows * (length - 1)), ("gemlora", labelled)]
    assert labelled < rows * (length - 1) / 2


@pytest.mark.parametrize(
    ("temperature", "softcap", "logit_scale"), [(1.0, None, 1.0), (0.7, 30.0, 0.5)]
)
def test_cpu_kernel_equals_trls_kernel(temperature, softcap, logit_scale):
    """Every output TRL's kernel offers, and the gradient of the log-probabilities, over more
    positions than one chunk holds; a target tied with an earlier word is not a top-1 hit."""
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, _ChunkedLogProbFunction

    torch.manual_seed(0)
    count, width, vocab = 2 * TOKENS_PER_CHUNK + 5, 48, 50_000
    weight = torch.randn(vocab, width) * 0.2
    weight[7] = weight[3]  # words 3 and 7 always tie
    hidden = torch.randn(count, width)
    targets = torch.randint(0, vocab, (count,))
    targets[:4] = 7
    hidden[:4] = weight[7] * 5  # ...and win: the argmax is word 3, so these are not top-1 hits
    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    args = (temperature, _CHUNKED_LOGPROB_CHUNK_SIZE, softcap, logit_scale, outputs)
    results, grads = [], []
    for kernel in (_ChunkedLogProbFunction, CpuLabelledLogProbs):
        leaf = hidden.clone().requires_grad_()
        result = kernel.apply(leaf, weight, None, targets, *args)
        (result[0] * torch.linspace(0.5, 1.5, count)).sum().backward()
        results.append(result)
        grads.append(leaf.grad)
    for name, theirs, ours in zip(outputs, *results, strict=True):
        if name == "is_top1":
            assert torch.equal(theirs, ours) and not ours[:4].any() and ours.dtype == torch.bool
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_cpu_kernel_reads_a_bf16_head_as_its_fp32_upcast():
    """A head kept in bf16 (an fp32 run's tied embedding) gives exactly what its fp32 upcast
    gives: tiles are upcast, never the computation downcast."""
    torch.manual_seed(0)
    weight = (torch.randn(10_000, 32) * 0.2).bfloat16()
    hidden, targets = torch.randn(9, 32), torch.randint(0, 10_000, (9,))
    outputs = ("log_probs", "entropy", "is_top1")
    results, grads = [], []
    for head in (weight, weight.float()):
        leaf = hidden.clone().requires_grad_()
        result = CpuLabelledLogProbs.apply(leaf, head, None, targets, 1.0, 0, None, 1.0, outputs)
        result[0].sum().backward()
        results.append(result)
        grads.append(leaf.grad)
    for ours, upcast in zip(*results, strict=True):
        assert (ours is None and upcast is None) or torch.equal(ours, upcast)
    assert torch.equal(grads[0], grads[1])


def fp32_log_probs(hidden, weight, targets, temperature, softcap, logit_scale, weights):
    """Plain float32 autograd over the whole `[positions, vocabulary]` logits of the upcast
    inputs: log-probabilities of `targets`, entropies, and the gradient of
    `sum(weights * log_probs)` with respect to `hidden`."""
    leaf = hidden.float().requires_grad_()
    raw = leaf @ weight.float().T * logit_scale
    if softcap is not None:
        raw = softcap * torch.tanh(raw / softcap)
    log_softmax = torch.log_softmax(raw / temperature, dim=-1)
    log_probs = log_softmax.gather(-1, targets[:, None])[:, 0]
    (log_probs * weights).sum().backward()
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    return log_probs.detach(), entropy.detach(), leaf.grad


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference).norm() / reference.norm())


@pytest.mark.parametrize(
    ("temperature", "softcap", "logit_scale"), [(1.0, None, 1.0), (0.7, 30.0, 0.5)]
)
def test_cpu_kernel_in_bf16_equals_an_fp32_reference(temperature, softcap, logit_scale):
    """bf16 hidden states and head (a bf16 run: AVX512-BF16 CPUs): two chunks of positions
    over three and a bit vocabulary tiles, against float32 log-softmax and autograd on the same
    (rounded) values. bf16 logits carry ~2^-9 of their size in error (a logit of 15: 0.03),
    which is what the log-probabilities show; measured here 0.02 at most, gradients 0.4% off
    in norm, as TRL's own kernel in bf16 (0.2-0.3%)."""
    torch.manual_seed(0)
    count, width, vocab = TOKENS_PER_CHUNK + 5, 48, 3 * VOCABULARY_TILE + 100
    weight = (torch.randn(vocab, width) * 0.2).bfloat16()
    hidden = torch.randn(count, width).bfloat16()
    targets = torch.randint(0, vocab, (count,))
    hidden[:8] = weight[targets[:8]] * 5  # confident positions: log-probabilities near 0
    outputs = ("log_probs", "entropy", "is_top1")
    weights = torch.linspace(0.5, 1.5, count)
    leaf = hidden.clone().requires_grad_()
    log_probs, entropy, *_, is_top1 = CpuLabelledLogProbs.apply(
        leaf, weight, None, targets, temperature, 0, softcap, logit_scale, outputs
    )
    (log_probs * weights).sum().backward()
    ref_log_probs, ref_entropy, ref_grad = fp32_log_probs(
        hidden, weight, targets, temperature, softcap, logit_scale, weights
    )
    assert log_probs.dtype == torch.float32 and leaf.grad.dtype == torch.bfloat16
    torch.testing.assert_close(log_probs, ref_log_probs, rtol=0, atol=0.05)
    torch.testing.assert_close(entropy, ref_entropy, rtol=0, atol=0.1)
    assert relative_error(leaf.grad, ref_grad) < 0.01
    assert is_top1[:8].all() and is_top1.sum() < count / 2


def test_cpu_kernel_without_labelled_positions_keeps_the_graph():
    leaf = torch.randn(0, 16, requires_grad=True)
    log_probs, *_ = CpuLabelledLogProbs.apply(
        leaf,
        torch.randn(100, 16),
        None,
        torch.zeros(0, dtype=torch.long),
        1.0,
        0,
        None,
        1.0,
        ("log_probs",),
    )
    log_probs.sum().backward()
    assert log_probs.shape == (0,) and leaf.grad.shape == (0, 16)


def test_labelled_only_loss_and_gradients_equal_the_full_head(model, tokenizer):
    batch = padded_batch(tokenizer)
    full = loss_and_grads(model, batch)
    with fast_loss_head():
        compact = loss_and_grads(model, batch)
    assert_same(compact, full)
    # and both equal the model's own loss over the full logits
    own = model(**{k: v for k, v in batch.items()}, fused_lm_head=False).loss.item()
    assert full[0] == pytest.approx(own, rel=1e-5)


def test_bf16_model_loss_and_gradients_through_the_fast_head_equal_fp32(model, tokenizer):
    """The whole model in bf16 (a bf16 run) through gemlora's loss head, against the same
    rounded weights in float32 through TRL's head on every position (which equals the model's
    own loss: test_labelled_only_loss_and_gradients_equal_the_full_head). Measured here: loss
    within 3e-5 of it, LoRA gradients 0.7-1.5% off in norm (bf16 rounds every activation of
    the body too); a gradient pointing elsewhere is off by its own size."""
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    reference = copy.deepcopy(bf16).float()
    batch = padded_batch(tokenizer)
    with fast_loss_head():
        loss, grads = loss_and_grads(bf16, batch)
    reference_loss, reference_grads = loss_and_grads(reference, batch)
    assert loss == pytest.approx(reference_loss, rel=1e-3)
    assert grads.keys() == reference_grads.keys() and grads
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16
        assert relative_error(grad, reference_grads[name]) < 0.05, name


def test_padding_free_batch_lays_examples_end_to_end(tokenizer):
    rows = list(to_hf_dataset(ROWS, multimodal=False))
    padded = Gemma3ChatCollator(tokenizer)(rows)
    flat = Gemma3ChatCollator(tokenizer, padding_free=True)(rows)
    assert set(flat) == {"input_ids", "labels", "position_ids"}  # no padding, no mask
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    assert flat["input_ids"].shape == (1, sum(lengths))
    expected_ids = torch.cat([padded["input_ids"][i, :n] for i, n in enumerate(lengths)])
    assert flat["input_ids"][0].tolist() == expected_ids.tolist()
    expected_positions = [p for n in lengths for p in range(n)]
    assert flat["position_ids"][0].tolist() == expected_positions
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(flat["labels"][0, start] == IGNORE_INDEX for start in starts)
    assert (flat["labels"] != IGNORE_INDEX).sum() == (padded["labels"] != IGNORE_INDEX).sum()


def test_padding_free_loss_and_gradients_equal_the_padded_batch(model, tokenizer):
    rows = list(to_hf_dataset(ROWS, multimodal=False))
    padded = Gemma3ChatCollator(tokenizer)(rows)
    flat = Gemma3ChatCollator(tokenizer, padding_free=True)(rows)
    assert padded["input_ids"].shape[1] > 16  # longer than the sliding window
    with fast_loss_head():
        assert_same(loss_and_grads(model, flat), loss_and_grads(model, padded))


def test_padding_free_keeps_examples_apart(model, tokenizer):
    """Changing one example's tokens leaves the other examples' log-probabilities unchanged."""
    rows = list(to_hf_dataset(ROWS, multimodal=False))
    flat = Gemma3ChatCollator(tokenizer, padding_free=True)(rows)
    first_length = int((flat["position_ids"][0] == 0).nonzero()[1])
    changed = {k: v.clone() for k, v in flat.items()}
    changed["input_ids"][0, 1:first_length] = tokenizer.convert_tokens_to_ids("<pad>")
    with torch.no_grad():
        before = model(**flat, fused_lm_head=True).log_probs
        after = model(**changed, fused_lm_head=True).log_probs
    torch.testing.assert_close(before[0, first_length:], after[0, first_length:])


def test_multimodal_batches_stay_padded(built_models):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(built_models["tiny-gemma-3-mm"])
    with pytest.raises(ValueError, match="text-only"):
        Gemma3ChatCollator(processor, padding_free=True)
    conversations = [
        example(with_image("What colour is it?"), text("assistant", "red", 1), images=1),
        example(text("user", "Hi there, how are you today?"), text("assistant", "ok", 1)),
    ]
    batch = Gemma3ChatCollator(processor)(list(to_hf_dataset(conversations, multimodal=True)))
    assert {"attention_mask", "token_type_ids", "pixel_values"} <= set(batch)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert (batch["attention_mask"] == 0).any()  # the shorter row is padded


def test_group_by_length_batches_by_measured_token_length(tiny_config, tmp_path):
    """`training.group_by_length` hands the Trainer's length-grouped sampler the token lengths
    the validation measured; the multimodal base's batches stay padded whatever padding_free
    says."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from gemlora.bases import resolve_base
    from gemlora.train.dataset import LENGTH_COLUMN, load_training_data
    from gemlora.train.model import load_base
    from gemlora.train.sft import SupervisedMethod

    build_trainer = SupervisedMethod().build_trainer

    config = tiny_config(training={"group_by_length": True, "padding_free": True})
    data = load_training_data(config.data, config.base.model)
    loaded = load_base(config.base, resolve_base(config.base.model))
    trainer = build_trainer(config, loaded, data, tmp_path, progress=None)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    lengths = trainer.train_dataset[LENGTH_COLUMN]
    assert lengths == data.train_lengths and len(set(lengths)) > 1
    assert trainer.data_collator.padding_free is False

    ungrouped = build_trainer(tiny_config(), loaded, data, tmp_path / "b", progress=None)
    assert not isinstance(ungrouped._get_train_sampler(), LengthGroupedSampler)
    assert LENGTH_COLUMN not in ungrouped.train_dataset.column_names
