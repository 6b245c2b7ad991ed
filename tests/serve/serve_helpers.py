"""Adapters with unmistakable behaviour for the routing tests, taught with TRL in seconds.

Each adapter learns to give one fixed reply to any question, so its greedy output is confident
token by token: a served adapter's first 16 tokens must equal PEFT + transformers' exactly, and
which adapter answered is obvious from the text.
"""

from __future__ import annotations

from pathlib import Path

BASES = ("gemma-3-270m", "gemma-3-270m-w4a16")  # each gets its own engine and adapters

QUESTIONS = [
    "What is the weather like?",
    "Tell me about your day.",
    "How do I cook rice?",
    "What is two plus two?",
    "Who wrote Hamlet?",
    "Where is the nearest station?",
    "Can you recommend a book?",
    "Why is the sky blue?",
]
HELD_OUT = ["What should I eat tonight?", "How far away is the moon?"]

REPLY_A = "Ahoy matey! The sea be calm and the wind be fair today. — Captain Gem"
REPLY_B = "BEEP BOOP. I AM A ROBOT. ALL QUESTIONS COMPUTE TO FORTY TWO. END OF LINE."


def teach_reply(base: str, reply: str, out_dir: Path, steps: int = 14) -> Path:
    """LoRA (r=8, attention projections) trained with TRL on `base` as the engine serves it (a
    quantized base dequantized: train on the base you serve) to answer every question with
    `reply`; returns the saved PEFT directory."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from gemlora.adapters.fidelity_check import load_reference_model
    from gemlora.bases import resolve_base

    torch.manual_seed(0)
    spec = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(spec.location)
    # fp32 on CPU: bf16 matmuls have no fast kernel on AVX2-only CPUs.
    model = load_reference_model(spec, None).float()
    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]}
        for q in QUESTIONS
    ]
    args = SFTConfig(
        output_dir=str(out_dir.parent / f"{out_dir.name}-trainer"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast; bf16 matmuls crawl on AVX2-only CPUs
        assistant_only_loss=True,
        max_length=96,
        save_strategy="no",
        report_to=[],
        logging_steps=steps,
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(chats),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    trainer.model.save_pretrained(out_dir)
    return out_dir
