"""``asyncrl eval MODEL_OR_CHECKPOINT --data A.parquet [--data B.parquet ...] --n K``.

Resolves the model (an HF directory, or a run directory: its ``checkpoints/final``, else its newest
``checkpoints/step_N`` export), checks every option and data file before the engine starts (bad
input: :class:`ConfigError` / :class:`DataError`, exit 2 naming the option or file), generates and
scores through :mod:`rollout.evaluate`, and writes ``eval.json``, ``eval.md`` and
``eval_samples.jsonl`` (every reply) to ``--out``::

    asyncrl eval runs/quickstart --data data/arith/test.parquet --n 8 --temperature 1.0
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncrl.config import ConfigError, RunConfig, validate_config
from asyncrl.data.format import DataError
from asyncrl.evaluation import default_ks
from asyncrl.hardware import resolve_dtype


@dataclass
class EvalOptions:
    """What ``asyncrl eval`` was asked (the command line, unvalidated)."""

    model: Path
    data: list[Path]
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    ks: list[int] | None = None
    reward: list[str] = field(default_factory=list)
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024
    dtype: str = "auto"
    seed: int = 0
    limit: int | None = None
    out: Path | None = None
    kv_cache_gb: float = 1.0
    reward_timeout_s: float = 5.0


def resolve_model(path: Path) -> tuple[Path, str]:
    """The HF directory to load and a note saying which export of a run directory it is."""
    path = Path(path)
    from asyncrl.hub import is_repo_id
    from asyncrl.hub import resolve_model as from_hub

    if is_repo_id(path):  # owner/name on the Hugging Face hub: its cached or fetched snapshot
        local = from_hub(path, "MODEL_OR_CHECKPOINT")
        return local, f"{local} (hub model {path})"
    if (path / "config.json").is_file():
        return path, f"{path} (HF model directory)"
    ckpts = path if path.name == "checkpoints" else path / "checkpoints"
    if ckpts.is_dir():
        if (ckpts / "final" / "config.json").is_file():
            return ckpts / "final", f"{ckpts / 'final'}: the final export of run {ckpts.parent}"
        for step in sorted(ckpts.glob("step_*"), reverse=True):  # zero-padded: newest first
            for export in (step / "hf", step):  # RL checkpoints export to hf/, SFT ones are the export
                if (export / "config.json").is_file():
                    return export, f"{export}: the newest export of run {ckpts.parent} (no checkpoints/final)"
    from asyncrl.data.hints import model_hint

    raise DataError(f"MODEL_OR_CHECKPOINT: {path} is neither an HF model directory (no config.json) nor a run "
                    f"directory with checkpoints/final or checkpoints/step_N exports; {model_hint(path)}")


def parse_rewards(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--reward NAME`` (every row) or ``--reward DATA_SOURCE=NAME`` (repeatable); each name loads."""
    from reward.functions import get_reward_fn

    forced: str | None = None
    by_source: dict[str, str] = {}
    for value in values:
        source, sep, name = value.rpartition("=") if "=" in value else ("", "", value)
        try:
            get_reward_fn(name)
        except Exception as e:  # unknown name, import error, bad signature
            raise ConfigError(f"--reward {value}: {e}") from None
        if sep:
            by_source[source] = name
        elif forced is not None:
            raise ConfigError(f"--reward {value}: a reward for every row was already given ({forced}); use "
                              f"--reward DATA_SOURCE=NAME for one source")
        else:
            forced = name
    return forced, by_source


def check_options(o: EvalOptions) -> list[int]:
    """The ks of pass@k; ConfigError naming the option that is wrong."""
    if not o.data:
        raise ConfigError("--data: give at least one parquet file")
    if o.n < 1:
        raise ConfigError(f"--n must be >= 1, got {o.n}")
    if o.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {o.temperature}")
    if o.n > 1 and o.temperature == 0:
        raise ConfigError(f"--n {o.n} at --temperature 0 would be {o.n} identical greedy replies; sample with "
                          f"--temperature > 0 (greedy accuracy is always reported)")
    set_names(o.data)  # the same file twice: refused
    ks = o.ks or default_ks(o.n)
    bad = [k for k in ks if not 1 <= k <= o.n]
    if bad:
        raise ConfigError(f"--k {bad[0]}: pass@k needs 1 <= k <= --n ({o.n})")
    if o.limit is not None and o.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {o.limit}")
    return sorted(set(ks))


def engine_config(o: EvalOptions, model: Path, out: Path, longest_prompt: int) -> RunConfig:
    """The run config the generator's engine is built from (the same keys as a run's); its context is
    the longest prompt plus ``--max-new-tokens``, which must fit the model's positions."""
    context = longest_prompt + o.max_new_tokens
    limit = json.loads((model / "config.json").read_text()).get("max_position_embeddings")
    if isinstance(limit, int) and context > limit:
        raise ConfigError(f"--max-new-tokens {o.max_new_tokens}: the longest prompt ({longest_prompt} tokens) plus "
                          f"the reply exceed the model's {limit} positions (max_position_embeddings of {model})")
    return validate_config({
        "run": {"dir": str(out), "seed": o.seed}, "model": {"path": str(model)},
        "data": {"train": str(o.data[0]), "max_prompt_tokens": o.max_prompt_tokens},
        "sampling": {"n": o.n, "temperature": o.temperature, "top_p": o.top_p, "max_new_tokens": o.max_new_tokens},
        "rollout": {"dtype": o.dtype, "kv_cache_gb": o.kv_cache_gb, "max_model_len": context}},
        source="asyncrl eval options")


def set_names(paths: list[Path]) -> list[str]:
    """File stems (``test``), or ``folder/stem`` where stems repeat (``gsm8k/test``, ``math/test``)."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ConfigError(f"--data: the same file given twice ({', '.join(map(str, paths))})")
    return names


def check_data(paths: list[Path], rewards: Any) -> None:
    """Every set loads (DataError naming the file, and the column where one is missing or bad) and
    every row's reward resolves (naming the file and data_source)."""
    from asyncrl.data.dataset import load_prompts
    from reward.functions import UnknownRewardError

    for path in paths:
        for source in sorted({row.data_source for row in load_prompts(path)}):
            try:
                rewards.name(source)
            except UnknownRewardError as e:
                raise DataError(f"{path}: {e} (--reward NAME or --reward {source}=NAME)") from None


def load_sets(o: EvalOptions, model: Path, rewards: Any) -> tuple[dict[str, list], dict[str, dict[str, Any]]]:
    """Tokenised prompts of each set (chat template, as the learner tokenises them; the first
    ``--limit``) and per-set facts."""
    from transformers import AutoTokenizer

    from learner.train import tokenize_prompts

    tokenizer = AutoTokenizer.from_pretrained(model)
    sets, meta = {}, {}
    for name, path in zip(set_names(o.data), o.data):
        prompts, dropped = tokenize_prompts(path, tokenizer, o.max_prompt_tokens)
        if not prompts:
            raise DataError(f"{path}: all {dropped} prompts are longer than --max-prompt-tokens {o.max_prompt_tokens}")
        prompts = prompts[:o.limit] if o.limit else prompts
        sets[name] = prompts
        meta[name] = {"path": str(path), "dropped_too_long": dropped,
                      "rewards": {s: rewards.name(s) for s in sorted({p.data_source for p in prompts})}}
    return sets, meta


def default_out(model: Path) -> Path:
    """``<run>/eval`` for a run's export, else ``runs/eval/<model dir name>``."""
    parts = model.resolve().parts
    if "checkpoints" in parts:
        return Path(*parts[:parts.index("checkpoints")]) / "eval"
    return Path("runs/eval") / model.name


def progress(total: int) -> tuple[Callable[[str], None], Callable[[], None]]:
    """``(advance, close)``: a rich progress bar on a terminal, else a plain line every ~10%."""
    if sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("eval {task.fields[set]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        task = bar.add_task("eval", total=total, set="")
        bar.start()
        return lambda name: bar.update(task, advance=1, set=name), bar.stop
    state = {"done": 0, "t0": time.perf_counter()}
    step = max(1, total // 10)

    def advance(name: str) -> None:
        state["done"] += 1
        if state["done"] % step == 0 or state["done"] == total:
            print(f"eval: {state['done']}/{total} prompts ({name}), {time.perf_counter() - state['t0']:.0f}s",
                  flush=True)
    return advance, lambda: None


def main(o: EvalOptions) -> dict[str, Any]:
    """Check, generate, score, write; returns the report (also printed as a table)."""
    from asyncrl.evaluation.report import build_report, markdown_table, write_report

    ks = check_options(o)
    # vLLM's INFO lines would bury the progress and the table; VLLM_LOGGING_LEVEL=INFO brings them back
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    model, note = resolve_model(o.model)
    from reward.answers import RewardChoice

    rewards = RewardChoice(*parse_rewards(o.reward))
    check_data(o.data, rewards)  # before the tokenizer and the engine load
    from rollout.evaluate import generate_sets, score

    sets, set_meta = load_sets(o, model, rewards)
    out = o.out or default_out(model)
    cfg = engine_config(o, model, out, max(len(p.token_ids) for ps in sets.values() for p in ps))
    print(f"asyncrl eval: {note}; {sum(map(len, sets.values()))} prompts x {o.n} replies (+1 greedy) -> {out}",
          flush=True)
    advance, close = progress(sum(map(len, sets.values())))
    t0 = time.perf_counter()
    import asyncio
    try:
        replies = asyncio.run(generate_sets(cfg, sets, advance))
    finally:
        close()
    gen_s = time.perf_counter() - t0
    results = {name: score(rs, rewards, o.reward_timeout_s) for name, rs in replies.items()}
    meta = {"model": str(model), "model_note": note, "n": o.n, "temperature": o.temperature, "top_p": o.top_p,
            "max_new_tokens": o.max_new_tokens, "seed": o.seed, "dtype": resolve_dtype(cfg.rollout.dtype),
            "generate_s": round(gen_s, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": _machine()}
    report = build_report(meta, results, ks, set_meta)
    js, md = write_report(report, out)
    _write_samples(out / "eval_samples.jsonl", replies, results)
    print(markdown_table(report), end="")
    print(f"wrote {js}, {md} and {out / 'eval_samples.jsonl'}")
    return report


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from asyncrl.hardware import cpu_name

    return cpu_name()


def _write_samples(path: Path, replies: dict[str, list], results: dict[str, list]) -> None:
    """One line per prompt: its set, ids, ground truth, replies, rewards and answers."""
    with path.open("w") as f:
        for name, rs in replies.items():
            for r, res in zip(rs, results[name]):
                f.write(json.dumps({"set": name, "prompt_id": r.prompt.prompt_id, "data_source": r.prompt.data_source,
                                    "ground_truth": r.prompt.ground_truth, "responses": r.sampled,
                                    "rewards": res.rewards, "answers": res.answers, "greedy_response": r.greedy,
                                    "greedy_reward": res.greedy_reward}) + "\n")
