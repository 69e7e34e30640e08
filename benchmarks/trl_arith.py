"""TRL's GRPOTrainer on the quickstart's arithmetic task, set up as asyncrl's quickstart runs it.

Shared by ``bench_trl`` (step time) and ``bench_time_to_accuracy`` (accuracy against wall-clock):
the same model, prompts (the parquet's chat messages, rendered by the tokenizer's chat template),
``arith`` reward, group size, prompts per step, sampling and learning rate on both sides. TRL is
imported only inside the functions (the ``bench`` extra: ``pip install -e '.[bench]'``)::

    tok, model = load_policy(model_dir)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=arith_reward(),
                          args=grpo_config(out, prompts=4, n=8, max_new_tokens=64, max_steps=8, bf16=False),
                          train_dataset=arith_dataset(train_parquet))
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def require_trl(bench: str) -> None:
    """Exit with the install hint when ``trl`` is missing."""
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit(f"{bench}: the `trl` package is not installed; pip install -e '.[bench]'")


def add_task_args(ap: argparse.ArgumentParser) -> None:
    """The task's shape (defaults: configs/quickstart.toml) and the worker-mode arguments."""
    ap.add_argument("--prompts", type=int, default=4, help="prompts per optimiser step")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (group size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help="model directory (default: models/smollm2-135m; --smoke: tiny)")
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)


def task_argv(args: argparse.Namespace) -> list[str]:
    """The worker's ``--prompts/--n/--max-new-tokens`` arguments."""
    return ["--prompts", str(args.prompts), "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens)]


def quickstart_sets(model: Path, train: Path, test: Path, args: argparse.Namespace) -> list[str]:
    """``--set`` overrides running configs/quickstart.toml on ``model``/``train``/``test`` with the
    task's shape (one micro-batch per step, no final checkpoint)."""
    return [f"model.path={model}", f"data.train={train}", f"data.test={test}", "learner.save_final=false",
            f"sampling.n={args.n}", f"learner.prompts_per_step={args.prompts}",
            f"sampling.max_new_tokens={args.max_new_tokens}", f"learner.micro_batch_size={args.prompts * args.n}"]


def load_policy(model_dir: Path) -> tuple[Any, Any]:
    """Tokenizer (left padding, as generation wants) and fp32 model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, AutoModelForCausalLM.from_pretrained(model_dir)


def arith_dataset(path: Path) -> Any:
    """A ``datasets.Dataset`` of ``prompt`` (chat messages) and ``ground_truth`` from an arith parquet."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = pq.read_table(path).to_pylist()
    return Dataset.from_list([{"prompt": r["prompt"], "ground_truth": r["reward_model"]["ground_truth"]}
                              for r in rows])


def arith_reward() -> Callable[..., list[float]]:
    """asyncrl's ``arith`` reward as a TRL reward function (completions are chat messages)."""
    from reward.functions import get_reward_fn

    score = get_reward_fn("arith")

    def arith(completions: list, ground_truth: list, **_: object) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(score("arith", t, g, {})) for t, g in zip(texts, ground_truth)]

    return arith


def grpo_config(out_dir: Path, *, prompts: int, n: int, max_new_tokens: int, max_steps: int, bf16: bool) -> Any:
    """GRPOConfig matching the quickstart: ``prompts`` x ``n`` samples generated and trained per
    optimiser step (one generation batch per step, one gradient step per batch), temperature 0.7,
    lr 1e-5 constant (asyncrl has no decay; TRL's default is linear), AdamW without weight decay,
    grad-norm clip 1.0, no KL. ``bf16``: bf16 autocast on fp32 weights (as asyncrl's learner)."""
    from trl import GRPOConfig

    return GRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=prompts * n, num_generations=n,
                      gradient_accumulation_steps=1, max_completion_length=max_new_tokens, temperature=0.7,
                      learning_rate=1e-5, lr_scheduler_type="constant", beta=0.0, max_steps=max_steps,
                      logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=bf16, seed=0,
                      disable_dropout=True, disable_tqdm=True)


def check_batches(trainer: Any, prompts: int, n: int) -> dict[str, int]:
    """TRL's own generation/step arithmetic, asserted to be ``prompts`` x ``n`` per optimiser step."""
    a = trainer.args
    shape = {"generation_batch_size": a.generation_batch_size, "steps_per_generation": a.steps_per_generation,
             "num_iterations": a.num_iterations, "per_device_train_batch_size": a.per_device_train_batch_size}
    if (a.generation_batch_size, a.steps_per_generation, a.num_iterations) != (prompts * n, 1, 1):
        raise RuntimeError(f"TRL does not generate {prompts} prompts x {n} samples per optimiser step: {shape}")
    return shape
