"""LoRA vs full fine-tuning of the same model, one run after the other in one invocation.

Both sides run the same config for the same number of steps; the LoRA side adds
``learner.lora.rank`` (and its learning rate). From each run's own metrics it reports, side by
side with ratios: MiB and seconds per weight sync, the generator's pause per sync, the learner's
step (train) time, the learner's peak resident memory, and samples/s.

    python benchmarks/bench_lora.py                       # quickstart config (SmolLM2-135M), 12 steps each
    python benchmarks/bench_lora.py --smoke               # tiny model, 6 steps each
    asyncrl bench lora --steps 20 --rank 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_weight_sync import cpu_name  # noqa: E402
from benchmarks.common import REPO, SMOLLM2, table, tiny_sets, write_results  # noqa: E402
from benchmarks.launch import port_sets, read_metrics, run_up  # noqa: E402

SKIP = 2  # first steps excluded from medians (engine warm-up, first allocations)


def side(run_dir: Path) -> dict[str, Any]:
    """One run's figures from ``metrics.jsonl`` and ``rollout-0.jsonl``."""
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    tail = steps[SKIP:] or steps
    syncs = [r for r in tail if r.get("weight_sync_s", 0) > 0]
    gen = [json.loads(line) for line in (run_dir / "rollout-0.jsonl").read_text().splitlines() if line.strip()]
    last_gen = gen[-1]
    n_syncs = max(1, int(last_gen["policy_version"]))  # every step syncs (sync_every = 1) plus the first
    span = tail[-1]["time_s"] - (steps[SKIP - 1]["time_s"] if len(steps) > SKIP else 0.0)
    return {
        "sync_mb": statistics.median(r["weight_sync_mb"] for r in syncs) if syncs else 0.0,
        "sync_s": statistics.median(r["weight_sync_s"] for r in syncs) if syncs else 0.0,
        "generator_pause_ms": 1000 * last_gen["paused_s"] / (n_syncs + 1),
        "learner_train_s": statistics.median(r["train_s"] for r in tail),
        "learner_peak_rss_mb": max(r["peak_rss_mb_r0"] for r in steps),
        "samples_per_s": sum(r["samples"] for r in tail) / span,
        "reward_first": steps[0]["reward_mean"], "reward_last": steps[-1]["reward_mean"], "steps": len(steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="default: configs/quickstart.toml with SmolLM2-135M "
                    "when imported (models/smollm2-135m), else configs/tiny_cpu.toml on a tiny model")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--lora-lr", type=float, default=2e-4)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for both sides")
    ap.add_argument("--compare-ops", action="store_true", help="a third run: LoRA with vLLM's own CPU LoRA ops "
                    "(ASYNCRL_LORA_OPS=vllm) instead of rollout/lora_ops.py's grouped ones")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 6 steps")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    smoke = args.smoke or (args.config is None and not (SMOLLM2 / "config.json").is_file())
    config = args.config or REPO / "configs" / ("tiny_cpu.toml" if smoke else "quickstart.toml")
    steps = 6 if args.smoke else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        common = list(args.sets)
        if config.name == "tiny_cpu.toml" and not any(s.startswith("model.path") for s in common):
            common += tiny_sets(Path(tmp))
        common += ["learner.save_final=false", "learner.val_every=0", "learner.sync_every=1"]
        lora = [f"learner.lora.rank={args.rank}", f"learner.lora.alpha={args.alpha}", f"learner.lr={args.lora_lr}"]
        results: dict[str, dict[str, Any]] = {}
        sides = [("full", []), ("lora", lora)] + [("lora_vllm_ops", lora)] * args.compare_ops
        for name, extra in sides:
            run_dir = Path(tmp) / name
            print(f"running {name}: up {config.name} ({steps} steps)", flush=True)
            env = {"ASYNCRL_LORA_OPS": "vllm"} if name == "lora_vllm_ops" else {}
            with _env(env):
                res = run_up(config, run_dir, common + extra + port_sets(), steps, timeout_s=6 * 3600)
            if res.returncode != 0:
                sys.exit(f"{name} run failed ({res.returncode}):\n{res.stdout[-4000:]}")
            results[name] = side(run_dir)
    report(results, config, steps, args, args.out)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the processes started inside (restored after)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report(results: dict[str, dict[str, Any]], config: Path, steps: int, args: argparse.Namespace,
           out: Path) -> None:
    full, lora = results["full"], results["lora"]
    keys = ["sync_mb", "sync_s", "generator_pause_ms", "learner_train_s", "learner_peak_rss_mb", "samples_per_s"]
    other = results.get("lora_vllm_ops")
    rows = [{"metric": k, "full": full[k], "lora": lora[k], "lora / full": lora[k] / full[k] if full[k] else "",
             **({"lora, vLLM's CPU ops": other[k]} if other else {})} for k in keys]
    md = table(rows, ["metric", "full", "lora", "lora / full"] + ["lora, vLLM's CPU ops"] * bool(other))
    md += (f"\n\n{config.name}, {steps} steps per side (medians over steps {SKIP + 1}..{steps}), LoRA rank "
           f"{args.rank}, alpha {args.alpha}, lr {args.lora_lr}; CPU: {cpu_name()}. Generator pause: seconds "
           f"inside syncs / syncs. Train reward first -> last step: full {full['reward_first']:.2f} -> "
           f"{full['reward_last']:.2f}, lora {lora['reward_first']:.2f} -> {lora['reward_last']:.2f} (too few "
           f"steps to compare learning; see the README).")
    write_results(out, "lora", {"config": str(config), "steps": steps, "rank": args.rank, "cpu": cpu_name(),
                                **results}, md)


if __name__ == "__main__":
    main()
