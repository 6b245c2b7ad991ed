"""gemlora's trainer against plain TRL, in the same run: speed, memory and the loss curve.

    python benchmarks/train.py                        # or: make bench-train
    python benchmarks/train.py --cases style-270m --rounds 1 --steps 10

For each case (a base and a dataset) it trains the same LoRA twice per round, each in a fresh
process, the order alternating from round to round so that drift on a noisy machine hits both:

- gemlora: `gemlora.train.sft.SupervisedMethod`, what `gemlora train` runs (its collator,
  padding-free batches for text-only bases, the LM head on labelled positions only);
- plain TRL: `SFTTrainer` as TRL's docs show it: the dataset's `messages` (and `images`), TRL's
  own collator, `assistant_only_loss=True`, the model loaded in fp32 on a CPU.

Both get the same base, examples, seed, LoRA config, batch size, learning rate and steps. LoRA
dropout is 0 in both: dropout masks depend on how a batch is laid out (padded rows or one flat
row), and the point of comparing the curves is that the maths is the same.

Reported per trainer: median step time (the first step, which warms up, excluded), tokens/s
(every real token, and the labelled ones), peak RSS of the process (peak CUDA memory on a GPU),
the RSS before training and its peak during training (what training adds over the loaded model),
per-step losses; per case: the ratios gemlora/TRL and the largest loss difference. A control run
(plain TRL again, its head summing the vocabulary in tiles of another size: same maths, other
fp32 rounding) shows how close two correct implementations' curves stay. JSON goes to stdout and
`--out`; a PNG of the loss curves and step times next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("gemlora", "trl")
# The control: plain TRL again, its fused head summing the vocabulary in tiles of another size.
# Same maths, another fp32 rounding: how far two correct implementations' curves drift apart.
CONTROL = "trl-reordered"
CONTROL_TILE = 16384  # TRL's own is 32768


@dataclass(frozen=True)
class Case:
    name: str
    base: str
    dataset: str  # a sample set (gemlora data samples)
    batch_size: int
    steps: int
    lr: float
    r: int


CASES = {
    # the demo's fine-tune: 30 steps of 4 style chats on the real Gemma 3 270M
    "style-270m": Case("style-270m", "gemma-3-270m", "style-chat", 4, 30, 1e-3, 16),
    # the tiny random multimodal Gemma 3 on image questions (batches stay padded)
    "tiny-mm": Case("tiny-mm", "tiny-gemma-3-mm", "shapes-vqa", 4, 20, 1e-3, 8),
}
LORA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


# --- one training, in its own process ----------------------------------------------------------


def worker(trainer_kind: str, case: Case, samples: Path, out: Path) -> None:
    import transformers

    train_file = samples / case.dataset / "train.jsonl"
    transformers.set_seed(0)
    if trainer_kind == "gemlora":
        trainer = gemlora_trainer(case, train_file, out.parent / f"run-{trainer_kind}")
    else:
        trainer = trl_trainer(case, train_file, out.parent / f"run-{trainer_kind}")
    if trainer_kind == CONTROL:
        from trl.trainer import utils

        utils._CHUNKED_LOGPROB_CHUNK_SIZE = CONTROL_TILE
    meter = Meter(trainer)
    rss_before = current_rss_mib()
    with RssSampler() as during_training:
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    report = meter.report(losses, rss_before) | {"peak_rss_training_mib": during_training.peak}
    out.write_text(json.dumps(report))


def gemlora_trainer(case: Case, train_file: Path, run_dir: Path):
    from gemlora.bases import resolve_base
    from gemlora.train import parse_config
    from gemlora.train.dataset import load_training_data
    from gemlora.train.model import load_base
    from gemlora.train.sft import SupervisedMethod

    config = parse_config(
        {
            "base": {"model": case.base},
            "lora": {"r": case.r, "alpha": 2 * case.r, "dropout": 0.0},
            "data": {"train_file": str(train_file), "eval_fraction": 0.0},
            "training": {
                "max_steps": case.steps,
                "batch_size": case.batch_size,
                "lr": case.lr,
                "seed": 0,
                "save_steps": 10 * case.steps,
            },
            "output": {"name": "bench", "register_adapter": False},
        }
    )
    data = load_training_data(config.data, config.base.model)
    loaded = load_base(config.base, resolve_base(case.base))
    return SupervisedMethod().build_trainer(config, loaded, data, run_dir, progress=None)


def trl_trainer(case: Case, train_file: Path, run_dir: Path):
    """Plain TRL, as its SFT docs show: conversational rows, TRL's collator, assistant-only loss.
    The OpenAI JSONL file is turned into TRL's rows first (image URLs into `images`), untimed."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from gemlora.bases import resolve_base

    location = resolve_base(case.base).location
    processor = AutoProcessor.from_pretrained(location)
    multimodal = hasattr(processor, "image_processor")
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = model_class.from_pretrained(location, dtype=dtype)
    targets = (
        rf"^(?!.*vision_tower).*\.layers\.\d+\..*\.({'|'.join(LORA_TARGETS)})$"
        if multimodal
        else LORA_TARGETS
    )
    args = SFTConfig(
        output_dir=str(run_dir),
        max_steps=case.steps,
        per_device_train_batch_size=case.batch_size,
        learning_rate=case.lr,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        assistant_only_loss=True,
        bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,  # as gemlora's default, so both do the same work
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=trl_rows(train_file, multimodal),
        processing_class=processor,
        peft_config=LoraConfig(
            r=case.r, lora_alpha=2 * case.r, lora_dropout=0.0, target_modules=targets
        ),
    )


def trl_rows(train_file: Path, multimodal: bool):
    from datasets import Dataset

    from gemlora.data import read_dataset

    rows = []
    for example in read_dataset(train_file).examples:
        messages = [
            {"role": m.role, "content": _trl_content(m, multimodal)} for m in example.messages
        ]
        row = {"messages": messages}
        if multimodal:
            row["images"] = [image.to_pil() for image in example.images]
        rows.append(row)
    return Dataset.from_list(rows)


def _trl_content(message, multimodal: bool):
    if not multimodal:
        return "".join(part.text for part in message.content)
    return [
        {"type": "text", "text": part.text} if hasattr(part, "text") else {"type": "image"}
        for part in message.content
    ]


class Meter:
    """Step times and the tokens each step trained on, counted from the batches themselves."""

    def __init__(self, trainer) -> None:
        from transformers import TrainerCallback

        self.step_times: list[float] = []
        self.tokens = 0
        self.labelled = 0
        collate = trainer.data_collator

        def counting(rows):
            batch = collate(rows)
            mask = batch.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            self.labelled += int((batch["labels"][:, 1:] != -100).sum())
            return batch

        trainer.data_collator = counting
        meter = self

        class Timer(TrainerCallback):
            def on_step_begin(self, *_args, **_kwargs):
                meter.started = time.perf_counter()

            def on_step_end(self, *_args, **_kwargs):
                meter.step_times.append(time.perf_counter() - meter.started)

        trainer.add_callback(Timer())

    def report(self, losses: list[float], rss_before: float) -> dict:
        import torch

        timed = self.step_times[1:] or self.step_times
        per_step = len(self.step_times)
        report = {
            "step_s_median": statistics.median(timed),
            "steps": per_step,
            "tokens_per_s": self.tokens / sum(self.step_times),
            "labelled_tokens_per_s": self.labelled / sum(self.step_times),
            "tokens": self.tokens,
            "labelled_tokens": self.labelled,
            "losses": losses,
            "rss_before_train_mib": rss_before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if torch.cuda.is_available():
            report["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return report


class RssSampler:
    """The highest RSS while the block runs (ru_maxrss covers the process's whole life, model
    loading included), sampled every 10 ms by a thread."""

    def __enter__(self) -> RssSampler:
        import threading

        self.peak = current_rss_mib()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, current_rss_mib())

    def __exit__(self, *_exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, current_rss_mib())


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the comparison ---------------------------------------------------------------------------


def run_case(case: Case, samples: Path, rounds: int, scratch: Path) -> dict:
    runs: dict[str, list[dict]] = {kind: [] for kind in TRAINERS}
    for round_index in range(rounds):
        order = TRAINERS if round_index % 2 == 0 else TRAINERS[::-1]
        for kind in order:
            out = scratch / f"{case.name}-{kind}-{round_index}.json"
            label = f"{case.name} round {round_index + 1}/{rounds} {kind}"
            runs[kind].append(train_once(kind, case, samples, out, label))
    control = train_once(CONTROL, case, samples, scratch / f"{case.name}-control.json", CONTROL)
    return summarize(case, runs) | {
        "control_loss_max_rel_diff": max_relative_difference(
            control["losses"], runs["trl"][0]["losses"]
        )
    }


def train_once(kind: str, case: Case, samples: Path, out: Path, label: str) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--cases", case.name]
    command += ["--samples", str(samples), "--worker-out", str(out), "--steps", str(case.steps)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "0"})
    print(f"{label}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return json.loads(out.read_text())


def max_relative_difference(ours: list[float], theirs: list[float]) -> float:
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs, strict=True))


def summarize(case: Case, runs: dict[str, list[dict]]) -> dict:
    def median(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[kind])

    ours, theirs = runs["gemlora"][0]["losses"], runs["trl"][0]["losses"]
    differences = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    per_trainer = {
        kind: {
            "step_s_median": median(kind, "step_s_median"),
            "tokens_per_s": median(kind, "tokens_per_s"),
            "labelled_tokens_per_s": median(kind, "labelled_tokens_per_s"),
            "peak_rss_mib": median(kind, "peak_rss_mib"),
            "rss_before_training_mib": median(kind, "rss_before_train_mib"),
            "peak_rss_training_mib": median(kind, "peak_rss_training_mib"),
            "rss_added_by_training_mib": statistics.median(
                run["peak_rss_training_mib"] - run["rss_before_train_mib"] for run in runs[kind]
            ),
            "tokens_per_step": runs[kind][0]["tokens"] / runs[kind][0]["steps"],
            "labelled_tokens_per_step": runs[kind][0]["labelled_tokens"] / runs[kind][0]["steps"],
            "losses": runs[kind][0]["losses"],
            "runs": runs[kind],
        }
        for kind in TRAINERS
    }
    pairs = list(zip(runs["gemlora"], runs["trl"], strict=True))
    return {
        "case": case.__dict__ | {"target_modules": LORA_TARGETS},
        "trainers": per_trainer,
        "step_rate_ratio": statistics.median(
            t["step_s_median"] / g["step_s_median"] for g, t in pairs
        ),
        "peak_rss_ratio": statistics.median(
            g["peak_rss_mib"] / t["peak_rss_mib"] for g, t in pairs
        ),
        # what training itself adds (activations, loss head, optimizer), loading left out
        "training_rss_ratio": statistics.median(
            (g["peak_rss_training_mib"] - g["rss_before_train_mib"])
            / (t["peak_rss_training_mib"] - t["rss_before_train_mib"])
            for g, t in pairs
        ),
        "loss_max_abs_diff": max(differences),
        "loss_max_rel_diff": max_relative_difference(ours, theirs),
        "same_labelled_tokens": runs["gemlora"][0]["labelled_tokens"]
        == runs["trl"][0]["labelled_tokens"],
    }


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
    for row, result in zip(axes, results, strict=True):
        name = result["case"]["name"]
        for kind, style in (("trl", "-"), ("gemlora", "--")):
            losses = result["trainers"][kind]["losses"]
            row[0].plot(range(1, len(losses) + 1), losses, style, label=kind)
        row[0].set(title=f"{name}: training loss per step", xlabel="step", ylabel="loss")
        row[0].set_yscale("log")
        row[0].legend()
        times = [result["trainers"][kind]["step_s_median"] for kind in TRAINERS]
        row[1].bar(TRAINERS, times, color=["tab:orange", "tab:blue"])
        row[1].set(
            title=f"{name}: median step time (gemlora {result['step_rate_ratio']:.2f}x faster)",
            ylabel="seconds",
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES)
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per case")
    parser.add_argument("--steps", type=int, default=None, help="override every case's steps")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train.json")
    parser.add_argument("--samples", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker", choices=[*TRAINERS, CONTROL], default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    cases = [CASES[name] for name in options.cases.split(",")]
    if options.steps:
        cases = [Case(**(case.__dict__ | {"steps": options.steps})) for case in cases]
    if options.worker:
        worker(options.worker, cases[0], options.samples, options.worker_out)
        return

    from gemlora.data.sample_sets import write_samples
    from gemlora.train.bases import build_model

    for case in cases:
        build_model(case.base)
    with tempfile.TemporaryDirectory(prefix="gemlora-bench-train-") as scratch:
        samples = Path(scratch) / "samples"
        write_samples(samples)
        results = [run_case(case, samples, options.rounds, Path(scratch)) for case in cases]
    report = {"machine": machine(), "rounds": options.rounds, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text + "\n")
    chart(results, options.out.with_suffix(".png"))
    print(f"wrote {options.out} and {options.out.with_suffix('.png')}", file=sys.stderr)


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
