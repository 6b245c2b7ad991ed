"""gemlora's Gemma 3 chat template renders exactly what Gemma 3 expects."""

import pytest
from transformers import AutoTokenizer

from gemlora.train.bases import GEMMA3_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tokenizer(built_models):
    return AutoTokenizer.from_pretrained(built_models["gemma-3-270m"])


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_built_models_carry_the_template(tokenizer, built_models):
    assert tokenizer.chat_template == GEMMA3_CHAT_TEMPLATE
    mm = AutoTokenizer.from_pretrained(built_models["tiny-gemma-3-mm"])
    assert mm.chat_template == GEMMA3_CHAT_TEMPLATE


@pytest.mark.parametrize(
    ("messages", "golden"),
    [
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
        ),
        (
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": " Hello! "},
                {"role": "user", "content": "Bye"},
            ],
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                    ],
                }
            ],
            "<bos><start_of_turn>user\n"
            "<start_of_image>What is this?<start_of_image><end_of_turn>\n",
        ),
        (
            [
                {"role": "system", "content": [{"type": "text", "text": "Sys."}]},
                {"role": "user", "content": [{"type": "text", "text": "Q"}]},
            ],
            "<bos><start_of_turn>user\nSys.\n\nQ<end_of_turn>\n",
        ),
    ],
    ids=["user-assistant", "system-folded-multiturn", "image-parts", "system-as-parts"],
)
def test_renders_gemma3_golden_strings(tokenizer, messages, golden):
    assert render(tokenizer, messages) == golden


def test_generation_prompt_opens_a_model_turn(tokenizer):
    text = render(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "roles must alternate user/assistant/user/assistant/... starting with user; "
            "message 1 is user",
        ),
        (
            [{"role": "assistant", "content": "a"}],
            "starting with user; message 0 is assistant",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
            "message 1 has role system",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}],
            "message 1 has role tool",
        ),
    ],
    ids=["user-user", "assistant-first", "late-system", "unknown-role"],
)
def test_refuses_non_alternating_roles(tokenizer, messages, error):
    with pytest.raises(Exception, match=error.replace(".", r"\.").replace("/", "/")):
        render(tokenizer, messages)


def test_marks_exactly_the_assistant_tokens(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Hi again."},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert ids.count(2) == 1, "<bos> must appear once"
    marked = [token for token, m in zip(ids, mask, strict=True) if m]
    expected = tokenizer.encode("Hello!<end_of_turn>", add_special_tokens=False) + tokenizer.encode(
        "Hi again.<end_of_turn>", add_special_tokens=False
    )
    assert marked == expected
    assert tokenizer.decode(marked) == "Hello!<end_of_turn>Hi again.<end_of_turn>"
