"""Learner memory over a real run: resident memory per rank at step 10 and at the last step
(goal: within 5% - no leak), and the peak, read from the run's own metrics.jsonl.

    python benchmarks/bench_memory.py                  # tiny config, 100 steps (~3 min on 2 cores)
    python benchmarks/bench_memory.py --smoke          # 6 steps
    python benchmarks/bench_memory.py --config configs/quickstart.toml --steps 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, table, tiny_sets, write_results  # noqa: E402
from benchmarks.launch import port_sets, read_metrics, run_up  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tiny_cpu.toml")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--early", type=int, default=10, help="step whose RSS is the baseline")
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.early = 6, 2
    with tempfile.TemporaryDirectory() as tmp:
        sets = list(args.sets)
        if args.config.name == "tiny_cpu.toml" and not any(s.startswith("model.path") for s in sets):
            sets += tiny_sets(Path(tmp))
        sets += port_sets() + [f"learner.world_size={args.world_size}", "learner.save_final=false",
                               "learner.val_every=0"]
        run_dir = Path(tmp) / "run"
        print(f"running: up {args.config} ({args.steps} steps)", flush=True)
        res = run_up(args.config, run_dir, sets, args.steps, timeout_s=24 * 3600)
        if res.returncode != 0:
            sys.exit(f"run failed ({res.returncode}):\n{res.stdout[-4000:]}")
        report(run_dir, args.early, args.world_size, args.out, args.config)


def report(run_dir: Path, early: int, world_size: int, out: Path, config: Path) -> float:
    """RSS per rank at step ``early`` and at the run's last step, from its metrics; returns the
    largest growth (last / early - 1)."""
    steps = {r["step"]: r for r in read_metrics(run_dir) if "rss_mb_r0" in r}
    n = max(steps)
    rows = []
    for rank in range(world_size):
        first, last = steps[early][f"rss_mb_r{rank}"], steps[n][f"rss_mb_r{rank}"]
        rows.append({"rank": rank, f"rss_mb_step{early}": first, f"rss_mb_step{n}": last,
                     "growth": last / first - 1, "peak_rss_mb": steps[n][f"peak_rss_mb_r{rank}"]})
    worst = max(r["growth"] for r in rows)
    md = table(rows, list(rows[0]))
    md += (f"\n\nconfig {config.name}, {n} steps, world_size {world_size}\n\n"
           f"**RSS growth step {early} -> {n}: {worst * 100:+.1f}% (goal within +5%)**")
    write_results(out, "memory", {"rows": rows, "growth_max": worst, "config": str(config), "steps": n}, md)
    return worst


if __name__ == "__main__":
    main()
