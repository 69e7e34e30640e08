"""Asynchronous vs synchronous training, side by side in one run of this script.

The same config twice: ``learner.max_staleness = 0`` (synchronous: generation waits for each
update, like a sync trainer) and ``max_staleness = K`` (asynchronous), each for the same
wall-clock budget. Reports samples/s, tokens/s, generator and learner busy fractions, reward
per sample, and writes reward-vs-time and reward-vs-samples curves in one PNG::

    python benchmarks/bench_async.py                       # quickstart config, 6 min each
    python benchmarks/bench_async.py --smoke               # tiny model, 25 s each (CI)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, SMOLLM2, table, tiny_sets, write_results  # noqa: E402
from benchmarks.run_control import port_sets, run_up, summarise  # noqa: E402


def plot(runs: dict[str, dict], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        steps = run["steps"]
        cum, total = [], 0
        for r in steps:
            total += r["samples"]
            cum.append(total)
        a.plot([r["time_s"] for r in steps], [r["reward_mean"] for r in steps], label=name)
        b.plot(cum, [r["reward_mean"] for r in steps], label=name)
    a.set(xlabel="wall-clock seconds", ylabel="batch reward (mean)", title="reward vs time")
    b.set(xlabel="samples trained", ylabel="batch reward (mean)", title="reward vs samples")
    a.legend()
    b.legend()
    fig.tight_layout()
    path = out / "async_vs_sync.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.toml")
    ap.add_argument("--seconds", type=float, default=360.0, help="training wall-clock budget per mode")
    ap.add_argument("--staleness", type=int, default=2, help="max_staleness of the async mode")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets = list(args.sets)
        if args.smoke or not (SMOLLM2 / "config.json").is_file():
            args.config = REPO / "configs" / "tiny_cpu.toml"
            args.seconds = min(args.seconds, 25.0) if args.smoke else args.seconds
            sets += tiny_sets(tmp_path)
        elif not Path("data/arith/train.parquet").is_file():
            from cli.data.arith import write_arith

            write_arith(Path("data/arith"))
        sets += ["learner.save_final=false", "learner.val_every=0"]
        runs = {}
        for name, s in (("sync", 0), ("async", args.staleness)):
            print(f"{name}: max_staleness={s}, {args.seconds:.0f}s of training", flush=True)
            runs[name] = run_up(args.config, tmp_path / name, sets + port_sets() + [f"learner.max_staleness={s}"],
                                seconds=args.seconds, label=name)
    report(runs, args.out, f"config {args.config.name}, {args.seconds:.0f}s of training each, "
                           f"async max_staleness={args.staleness}")


def report(runs: dict[str, dict], out: Path, note: str) -> float:
    """Table, curves and results of a ``{"sync": run, "async": run}`` pair (:func:`run_control.read_run`
    form); returns the async / sync samples/s ratio."""
    rows = [{"mode": name, **summarise(run)} for name, run in runs.items()]
    speed = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    png = plot(runs, out)
    cols = ["mode", "steps", "time_s", "samples_per_s", "tokens_per_s", "generator_busy", "learner_busy",
            "reward_mean_last_third"]
    md = table(rows, cols) + f"\n\n{note}\n\n**async / sync samples/s = {speed:.2f}x**"
    md += f"\n\n![curves]({png.name})" if png else ""
    write_results(out, "async_vs_sync", {"rows": rows, "speedup": speed,
                                         "curves": {k: v["steps"] for k, v in runs.items()}}, md)
    return speed


if __name__ == "__main__":
    main()
