"""Running ``asyncrl up`` from a benchmark: for a wall-clock budget or a step count, then
reading what the run wrote (learner metrics, generator stats)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO


def port_sets(num_rewards: int = 1) -> list[str]:
    socks, ports = [], []
    for _ in range(3 + num_rewards):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    rewards = ",".join(f'"127.0.0.1:{p}"' for p in ports[3:])
    return [f"transport.dispatch=127.0.0.1:{ports[0]}", f"transport.trajectories=127.0.0.1:{ports[1]}",
            f"weight_sync.address=127.0.0.1:{ports[2]}", f"transport.rewards=[{rewards}]"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def run_up(config: Path, run_dir: Path, sets: list[str], *, max_steps: int = 100000,
           seconds: float | None = None, label: str = "") -> dict[str, Any]:
    """Run ``asyncrl up`` until ``max_steps`` or until the learner has trained for ``seconds``
    (then Ctrl-C, as a user would); return its metrics and generator stats."""
    argv = [sys.executable, "-m", "cli.main", "up", str(config), "--run-dir", str(run_dir),
            "--max-steps", str(max_steps)] + [a for s in sets for a in ("--set", s)]
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = run_dir / "metrics.jsonl"
    try:
        while proc.poll() is None:
            time.sleep(2)
            recs = [r for r in read_jsonl(metrics) if "reward_mean" in r]
            if recs:
                print(f"  [{label}] step {recs[-1]['step']} t={recs[-1]['time_s']:.0f}s "
                      f"reward={recs[-1]['reward_mean']:.3f}", flush=True)
            if seconds is not None and recs and recs[-1]["time_s"] >= seconds:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    if proc.returncode not in (0, 130):
        tail = (run_dir.parent / f"{run_dir.name}.log").read_text()[-4000:]
        raise RuntimeError(f"asyncrl up failed ({proc.returncode}):\n{tail}")
    return {"steps": [r for r in read_jsonl(metrics) if "reward_mean" in r],
            "validation": [r for r in read_jsonl(metrics) if "val_accuracy" in r],
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
