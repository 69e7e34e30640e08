"""Running ``asyncrl up`` from a benchmark: for a wall-clock budget or a step count, then
reading what the run wrote (learner metrics, generator stats)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.launch import Up, port_sets, read_jsonl

__all__ = ["port_sets", "read_jsonl", "read_run", "run_up", "summarise"]


def run_up(config: Path, run_dir: Path, sets: list[str], *, max_steps: int = 100000,
           seconds: float | None = None, until: Callable[[list[dict[str, Any]]], bool] | None = None,
           label: str = "") -> dict[str, Any]:
    """Run ``asyncrl up`` until ``max_steps``, until the learner has trained for ``seconds``, or
    until ``until(records)`` (called about once a second with every ``metrics.jsonl`` record so
    far) returns True; the last two stop it with Ctrl-C, as a user would. Returns its metrics and
    generator stats. Its output goes to ``<run_dir>.log`` next to the run dir."""
    log = run_dir.parent / f"{run_dir.name}.log"
    metrics = run_dir / "metrics.jsonl"
    stopped, shown = False, None
    with Up(config, run_dir, sets, max_steps, log=log) as up:
        while up.proc.poll() is None:
            time.sleep(1)
            records = read_jsonl(metrics)
            recs = [r for r in records if "reward_mean" in r]
            if recs and recs[-1]["step"] != shown:
                shown = recs[-1]["step"]
                print(f"  [{label}] step {shown} t={recs[-1]['time_s']:.0f}s "
                      f"reward={recs[-1]['reward_mean']:.3f}", flush=True)
            if (seconds is not None and recs and recs[-1]["time_s"] >= seconds) or (until and until(records)):
                up.interrupt()
                stopped = True
                break
        code = up.wait(timeout_s=120 if stopped else 24 * 3600)
    if code not in (0, 130):
        raise RuntimeError(f"asyncrl up failed ({code}):\n{up.output[-4000:]}")
    return read_run(run_dir)


def read_run(run_dir: Path) -> dict[str, Any]:
    """What a run wrote: learner steps, validations, each generator's stats records."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    return {"steps": [r for r in metrics if "reward_mean" in r],
            "validation": [r for r in metrics if "val_accuracy" in r],
            "generators": [read_jsonl(p) for p in sorted(run_dir.glob("rollout-*.jsonl"))]}


def summarise(run: dict[str, Any]) -> dict[str, float]:
    """Throughput and busy fractions over the whole run (from step 1's end to the last step)."""
    steps = run["steps"]
    t = steps[-1]["time_s"]
    samples = sum(r["samples"] for r in steps)
    tokens = sum(r["tokens"] for r in steps)
    learner_busy = sum(r.get("train_s", 0.0) + r.get("weight_sync_s", 0.0) for r in steps)
    gens = [g[-1] for g in run["generators"] if g]
    out = {"steps": len(steps), "time_s": t, "samples": samples, "samples_per_s": samples / t,
           "tokens_per_s": tokens / t, "learner_busy": learner_busy / t,
           "reward_mean_last_third": sum(r["reward_mean"] for r in steps[-max(1, len(steps) // 3):])
           / max(1, len(steps[-max(1, len(steps) // 3):]))}
    if gens:
        out["generator_busy"] = sum(g["busy_s"] / g["time_s"] for g in gens) / len(gens)
        out["generator_paused"] = sum(g["paused_s"] / g["time_s"] for g in gens) / len(gens)
    if steps[-1].get("transport_s_total") is not None:
        out["transport_frac"] = steps[-1]["transport_s_total"] / t
    return out
