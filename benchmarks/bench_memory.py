"""Learner memory over a real run: resident memory per rank at step 10 and at the last step
(goal: within 5% - no leak), and the peak, read from the run's own metrics.jsonl.

    python benchmarks/bench_memory.py                  # tiny config, 100 steps (~3 min on 2 cores)
    python benchmarks/bench_memory.py --smoke          # 6 steps
    python benchmarks/bench_memory.py --config configs/quickstart.toml --steps 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, table, tiny_sets, write_results  # noqa: E402
from benchmarks.run_control import port_sets  # noqa: E402


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
        argv = [sys.executable, "-m", "cli.main", "up", str(args.config), "--run-dir", str(run_dir),
                "--max-steps", str(args.steps)] + [a for s in sets for a in ("--set", s)]
        print("running:", " ".join(argv[2:6]), f"... ({args.steps} steps)", flush=True)
        res = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            sys.exit(f"run failed ({res.returncode}):\n{res.stdout[-4000:]}")
        recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in recs if "rss_mb_r0" in r}
    rows = []
    for rank in range(args.world_size):
        early, last = steps[args.early][f"rss_mb_r{rank}"], steps[args.steps][f"rss_mb_r{rank}"]
        rows.append({"rank": rank, f"rss_mb_step{args.early}": early, f"rss_mb_step{args.steps}": last,
                     "growth": last / early - 1, "peak_rss_mb": steps[args.steps][f"peak_rss_mb_r{rank}"]})
    worst = max(r["growth"] for r in rows)
    md = table(rows, list(rows[0]))
    md += (f"\n\nconfig {args.config.name}, {args.steps} steps, world_size {args.world_size}\n\n"
           f"**RSS growth step {args.early} -> {args.steps}: {worst * 100:+.1f}% (goal within +5%)**")
    write_results(args.out, "memory", {"rows": rows, "growth_max": worst, "config": str(args.config),
                                       "steps": args.steps}, md)


if __name__ == "__main__":
    main()
