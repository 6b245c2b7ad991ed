"""Run inside the llmcompressor environment: python quantize_job.py SOURCE OUT gptq|rtn.

Imports nothing of gemlora (that environment does not have it). Writes a compressed-tensors
W4A16 g128 checkpoint and `quantization-report.json` into OUT.
"""

import json
import sys
from importlib import metadata

SUBJECTS = [
    ("the water cycle", "Water evaporates, condenses into clouds and falls again as rain."),
    ("photosynthesis", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("a binary search", "It halves a sorted range at each step until the target is found."),
    ("the French Revolution", "It began in 1789 and ended the absolute monarchy in France."),
    ("compound interest", "Interest is earned on the principal and on earlier interest."),
    ("how vaccines work", "They train the immune system to recognise a pathogen safely."),
    ("the speed of light", "Light travels about 300,000 kilometres per second in a vacuum."),
    ("a haiku", "A short poem of three lines with five, seven and five syllables."),
]
PROMPTS = [
    "Explain {subject} in one sentence.",
    "What should a student remember about {subject}?",
    "Write a short note about {subject} for a colleague.",
    "Summarise {subject} for a ten-year-old.",
]
NUM_SAMPLES = 64
MAX_LENGTH = 256


def calibration_texts(tokenizer) -> list[str]:
    """64 short chat-formatted texts: the distribution the served model sees."""
    texts = []
    for i in range(NUM_SAMPLES):
        subject, answer = SUBJECTS[i % len(SUBJECTS)]
        prompt = PROMPTS[(i // len(SUBJECTS)) % len(PROMPTS)].format(subject=subject)
        if i % 2:
            prompt = f"{prompt} Keep it plain."
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return texts


def main(source: str, out: str, method: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    # Calibrate in fp32: on a CPU without native bf16 every bf16 matmul is emulated and GPTQ's
    # calibration passes run ~3x slower. The checkpoint is saved in bf16, as the source is.
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    recipe_args = {"targets": "Linear", "scheme": "W4A16", "ignore": ["lm_head"]}
    if method == "gptq":
        texts = calibration_texts(tokenizer)
        dataset = Dataset.from_dict({"text": texts}).map(
            lambda row: tokenizer(
                row["text"], add_special_tokens=False, truncation=True, max_length=MAX_LENGTH
            ),
            remove_columns=["text"],
        )
        oneshot(
            model=model,
            dataset=dataset,
            recipe=GPTQModifier(**recipe_args),
            max_seq_length=MAX_LENGTH,
            num_calibration_samples=len(texts),
        )
    else:
        oneshot(model=model, recipe=QuantizationModifier(**recipe_args))
    model.to(torch.bfloat16).save_pretrained(out, save_compressed=True)
    report = {
        "method": method,
        "scheme": "W4A16",
        "group_size": 128,
        "symmetric": True,
        "format": "compressed-tensors pack-quantized",
        "ignore": recipe_args["ignore"],
        "calibration_samples": NUM_SAMPLES if method == "gptq" else 0,
        "llmcompressor": metadata.version("llmcompressor"),
        "compressed_tensors": metadata.version("compressed-tensors"),
    }
    with open(f"{out}/quantization-report.json", "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
