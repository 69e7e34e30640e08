"""Time to accuracy: asyncrl and TRL's GRPOTrainer on the quickstart task, one after the other.

Both train SmolLM2-135M-Instruct on data/arith with the ``arith`` reward, group size 8, 4 prompts
per optimiser step, 64 new tokens at temperature 0.7 and lr 1e-5, in the dtype this CPU computes
natively (bf16 where :func:`asyncrl.hardware.fast_bf16`, else fp32: asyncrl's ``"auto"`` generator
dtype and learner autocast, TRL's ``bf16``). Both validate greedily on the same first
``--val-prompts`` test prompts once before training and every ``--val-every`` optimiser steps
(asyncrl with vLLM, TRL with HF ``generate``, as each would for a user). Each trainer's clock
starts when its process is started (imports, model load and vLLM start-up included) and runs
through its validations. A trainer stops at ``--target`` greedy accuracy or after
``--cap-minutes``. Reported: accuracy against minutes (table, JSON, PNG) and the ratio of minutes
to reach the target, or the best accuracy both reach if lower::

    pip install -e '.[bench]'                       # trl, matplotlib
    asyncrl bench time-to-accuracy                  # up to 2 x 60 min: --target 0.7 --cap-minutes 60
    asyncrl bench time-to-accuracy --smoke          # tiny model, 3 steps each (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, SMOLLM2, pick_model, run_worker, table, write_results  # noqa: E402
from benchmarks.run_control import port_sets, run_up  # noqa: E402
from benchmarks.trl_arith import (  # noqa: E402
    add_task_args,
    arith_dataset,
    arith_reward,
    check_batches,
    grpo_config,
    load_policy,
    quickstart_sets,
    require_trl,
    task_argv,
)

NAMES = {"asyncrl": "asyncrl (vLLM + learner, async)", "trl": "TRL GRPOTrainer (HF generate)"}


def greedy_accuracy(model: Any, tok: Any, rows: list[dict[str, Any]], max_new_tokens: int, bf16: bool) -> float:
    """Share of ``rows`` (arith parquet rows) whose greedy reply earns the full ``arith`` reward,
    as asyncrl's ``val_accuracy``: one batched HF ``generate``, prompts rendered by the chat template."""
    import torch
    from transformers import GenerationConfig

    from asyncrl.evaluation import CORRECT_AT
    from reward.functions import get_reward_fn

    score = get_reward_fn("arith")
    ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
           ["input_ids"] for r in rows]
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")  # left padding (load_policy)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model.generate(**batch, generation_config=gen)
    model.train(training)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    rewards = [float(score("arith", t, r["reward_model"]["ground_truth"], r.get("extra_info") or {}))
               for t, r in zip(texts, rows)]
    return sum(r >= CORRECT_AT for r in rewards) / len(rewards)


def trl_worker(args: argparse.Namespace) -> None:
    """GRPOTrainer with a validation callback; prints the curve as JSON (minutes since ``--t0``)."""
    import pyarrow.parquet as pq
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    tok, model = load_policy(args.model)
    rows = pq.read_table(args.test).to_pylist()[:args.val_prompts]
    cap_s, curve = args.cap_minutes * 60, []

    def validate(step: int, model: Any) -> float:
        t = time.time()
        acc = greedy_accuracy(model, tok, rows, args.max_new_tokens, args.bf16)
        curve.append({"step": step, "minutes": (time.time() - args.t0) / 60, "accuracy": acc,
                      "val_s": time.time() - t})
        print(f"  [trl] step {step} val_accuracy={acc:.2f} at {curve[-1]['minutes']:.1f} min "
              f"(validation {curve[-1]['val_s']:.0f}s)", file=sys.stderr, flush=True)
        return acc

    class Validate(TrainerCallback):
        stop = "ended"

        def on_train_begin(self, a: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            validate(0, model)

        def on_step_end(self, a: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
            if time.time() - args.t0 >= cap_s:
                self.stop, control.should_training_stop = "cap", True
            elif state.global_step % args.val_every == 0 and validate(state.global_step, model) >= args.target:
                self.stop, control.should_training_stop = "target", True

    cfg = grpo_config(args.tmp, prompts=args.prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                      max_steps=args.max_steps, bf16=args.bf16)
    cb = Validate()
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=arith_reward(), args=cfg,
                          train_dataset=arith_dataset(args.data), callbacks=[cb])
    shape = check_batches(trainer, args.prompts, args.n)
    trainer.train()
    print(json.dumps({"curve": curve, "steps": trainer.state.global_step, "stop": cb.stop, "trl_batches": shape,
                      "minutes": (time.time() - args.t0) / 60}))


def run_trl(model: Path, train: Path, test: Path, args: argparse.Namespace, tmp: Path, bf16: bool) -> dict[str, Any]:
    print(f"TRL GRPOTrainer: until {args.target} greedy accuracy or {args.cap_minutes:g} min", flush=True)
    argv = [__file__, "--worker", "--model", str(model), "--data", str(train), "--test", str(test),
            "--tmp", str(tmp / "trl"), "--t0", repr(time.time()), *task_argv(args), *run_argv(args)]
    return run_worker(argv + (["--bf16"] if bf16 else []), timeout=args.cap_minutes * 60 + 1800, echo=True)


def run_asyncrl(model: Path, train: Path, test: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """configs/quickstart.toml until the target or the cap; each validation is timed when its
    record appears in metrics.jsonl (polled every second), from the start of ``asyncrl up``."""
    print(f"asyncrl quickstart: until {args.target} greedy accuracy or {args.cap_minutes:g} min", flush=True)
    sets = quickstart_sets(model, train, test, args) + port_sets() + [
        f"learner.val_every={args.val_every}", f"learner.val_prompts={args.val_prompts}"]
    curve: list[dict[str, Any]] = []
    state = {"stop": "ended"}
    t0 = time.time()

    def until(records: list[dict[str, Any]]) -> bool:
        now = time.time() - t0
        for r in [r for r in records if "val_accuracy" in r][len(curve):]:
            curve.append({"step": r["step"], "minutes": now / 60, "accuracy": r["val_accuracy"],
                          "learner_time_s": r["time_s"]})
            print(f"  [asyncrl] step {r['step']} val_accuracy={r['val_accuracy']:.2f} at {now / 60:.1f} min",
                  flush=True)
        if curve and curve[-1]["accuracy"] >= args.target:
            state["stop"] = "target"
        elif now >= args.cap_minutes * 60:
            state["stop"] = "cap"
        return state["stop"] != "ended"

    run = run_up(REPO / "configs" / "quickstart.toml", tmp / "asyncrl", sets, max_steps=args.max_steps,
                 until=until, label="asyncrl")
    until(run["validation"])  # a run that ended by itself (--max-steps): its last records, timed at its end
    return {"curve": curve, "steps": len(run["steps"]), "stop": state["stop"], "minutes": (time.time() - t0) / 60}


def quickstart_compute() -> str:
    """What configs/quickstart.toml computes in on this machine (generator dtype, learner precision, attention)."""
    from asyncrl.config import load_config
    from asyncrl.hardware import autocast_bf16_ok, mixed_precision_ok, resolve_dtype

    cfg = load_config(REPO / "configs" / "quickstart.toml")
    lr = cfg.learner
    learner = ("FSDP2 bf16 mixed precision" if mixed_precision_ok(lr.mixed_precision, "cpu") else
               "fp32 + bf16 autocast" if autocast_bf16_ok(lr.autocast_bf16, "cpu") else "fp32")
    attn = f", {lr.attn_implementation} attention" if lr.attn_implementation else ""
    return f"vLLM {resolve_dtype(cfg.rollout.dtype)}, learner {learner}{attn}"


def run_argv(args: argparse.Namespace) -> list[str]:
    return ["--target", str(args.target), "--cap-minutes", str(args.cap_minutes), "--val-every",
            str(args.val_every), "--val-prompts", str(args.val_prompts), "--max-steps", str(args.max_steps)]


def compare(curves: dict[str, list[dict[str, Any]]], target: float, cap_minutes: float) -> dict[str, Any]:
    """Minutes each curve takes to reach ``target`` accuracy, or the best accuracy both reach if
    lower (validations past the cap do not count), and their ratio TRL / asyncrl."""
    within = {k: [p for p in c if p["minutes"] <= cap_minutes] for k, c in curves.items()}
    best = {k: max((p["accuracy"] for p in c), default=0.0) for k, c in within.items()}
    threshold = min([target, *best.values()])
    minutes = {k: next((p["minutes"] for p in c if p["accuracy"] >= threshold), None) for k, c in within.items()}
    a, t = minutes.get("asyncrl"), minutes.get("trl")
    return {"target": target, "threshold": threshold, "target_reached_by_both": threshold >= target,
            "best_accuracy": best, "minutes_to_threshold": minutes,
            "ratio_trl_over_asyncrl": t / a if a and t is not None else None}


def plot(curves: dict[str, list[dict[str, Any]]], threshold: float, out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot([p["minutes"] for p in curve], [p["accuracy"] for p in curve], marker="o", label=NAMES[name])
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="wall-clock minutes since process start", ylabel="greedy validation accuracy",
           title="time to accuracy (quickstart task)", ylim=(-0.02, 1.02))
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "time_to_accuracy.png"
    fig.savefig(path, dpi=110)
    return path


def report(runs: dict[str, dict[str, Any]], args: argparse.Namespace, model: Path, dtypes: dict[str, str]) -> None:
    from asyncrl.hardware import cpu_name

    curves = {k: r["curve"] for k, r in runs.items()}
    res = compare(curves, args.target, args.cap_minutes)
    rows = [{"trainer": NAMES[k], "dtype": dtypes[k], "steps": r["steps"], "validations": len(r["curve"]),
             "best_accuracy": res["best_accuracy"][k], "minutes_to_threshold": res["minutes_to_threshold"][k],
             "stopped_by": r["stop"], "minutes": r["minutes"]} for k, r in runs.items()]
    md = table(rows, list(rows[0]))
    for k, curve in curves.items():
        md += f"\n\n{NAMES[k]}:\n\n" + table([{"step": p["step"], "minutes": p["minutes"], "accuracy": p["accuracy"]}
                                               for p in curve], ["step", "minutes", "accuracy"])
    ratio, th = res["ratio_trl_over_asyncrl"], res["threshold"]
    what = f"the target {th:.2f}" if res["target_reached_by_both"] else f"{th:.2f}, the best accuracy both reach " \
        f"(target {args.target:.2f} not reached by both)"
    md += (f"\n\nCPU: {cpu_name()}. Model {model.name}; {args.prompts} prompts x {args.n} samples per optimiser step, "
           f"{args.max_new_tokens} new tokens, T=0.7, lr 1e-5 constant, no KL; greedy validation on the first "
           f"{args.val_prompts} test prompts before training and every {args.val_every} optimiser steps. Minutes "
           f"count from each trainer's process start (imports, model load, vLLM start-up included) and include "
           f"each trainer's validation time (asyncrl: vLLM; TRL: batched HF generate). Cap {args.cap_minutes:g} "
           f"min each.\n\n**Minutes to reach {what}: ")
    md += (f"TRL / asyncrl = {ratio:.2f}x**" if ratio is not None else "no ratio (a trainer never validated)**")
    if th == 0.0:
        md += " (0.00: neither learned, so this is the ratio of start-up times only)"
    png = plot(curves, th, args.out)
    md += f"\n\n![accuracy vs minutes]({png.name})" if png else ""
    write_results(args.out, "time_to_accuracy", {"cpu": cpu_name(), "rows": rows, **res, "curves": curves,
                                                 "trl_batches": runs["trl"].get("trl_batches"),
                                                 "settings": settings(args, model)}, md)


def settings(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    """The run's options as JSON values (worker-only ones left out)."""
    skip = ("worker", "data", "tmp", "test", "t0", "bf16")
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in skip} | {
        "model": str(model)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=0.7, help="greedy validation accuracy to reach")
    ap.add_argument("--cap-minutes", type=float, default=60.0, help="wall-clock cap per trainer")
    ap.add_argument("--val-every", type=int, default=5, help="validate every N optimiser steps")
    ap.add_argument("--val-prompts", type=int, default=100, help="test prompts per validation")
    ap.add_argument("--max-steps", type=int, default=100000, help="step cap per trainer (the runs stop earlier)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 3 steps each, validating every step")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--test", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    add_task_args(ap)
    args = ap.parse_args()
    if args.worker:
        return trl_worker(args)
    require_trl("bench_time_to_accuracy")
    from asyncrl.hardware import fast_bf16

    bf16 = fast_bf16()
    dtypes = {"asyncrl": quickstart_compute(), "trl": "fp32" + (" + bf16 autocast (bf16=True)" if bf16 else "")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        from cli.data.arith import write_arith

        if args.smoke:
            model = pick_model(args.model and str(args.model), True, tmp_path)
            train, test = write_arith(tmp_path / "data", n_train=400, n_test=16)
            args.n, args.prompts, args.max_new_tokens, args.max_steps, args.val_every = 4, 2, 16, 3, 1
            args.val_prompts = min(args.val_prompts, 16)
        else:
            model = args.model or SMOLLM2
            if not (model / "config.json").is_file():
                sys.exit("bench_time_to_accuracy: import the model first: asyncrl model import-gguf "
                         "--out models/smollm2-135m")
            train, test = REPO / "data/arith/train.parquet", REPO / "data/arith/test.parquet"
            if not train.is_file() or not test.is_file():
                write_arith(REPO / "data/arith")
        runs = {"trl": run_trl(model, train, test, args, tmp_path, bf16),
                "asyncrl": run_asyncrl(model, train, test, args, tmp_path)}
    report(runs, args, model, dtypes)


if __name__ == "__main__":
    main()
