"""Scaling on paper, from rates measured here, plus a check that two generators on this
machine are not slower than one.

Runs the config with 1 and with 2 generators for the same wall-clock budget (async), reads
each component's own rate - generator samples per busy second, learner samples per training
second, seconds per weight sync - and models the asynchronous step time for G generators and
K learner ranks as ``max(S / (G r_gen), S / (K r_learn) + t_sync)`` (S samples per step; the
slower side sets the pace; learner ranks assumed to scale linearly, generators independent,
each on its own cores). The table is a projection for a machine with enough cores, stated
as such; the 1-vs-2 comparison is measured::

    python benchmarks/bench_scaling.py [--seconds 120] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, SMOLLM2, table, tiny_sets, write_results  # noqa: E402
from benchmarks.run_control import port_sets, run_up, summarise  # noqa: E402


def rates(run: dict) -> dict[str, float]:
    steps = run["steps"][1:] or run["steps"]
    gens = [g[-1] for g in run["generators"] if g]
    samples_per_step = sum(r["samples"] for r in steps) / len(steps)
    return {"samples_per_step": samples_per_step,
            "gen_samples_per_busy_s": sum(g["samples"] for g in gens) / max(1e-9, sum(g["busy_s"] for g in gens)),
            "learner_samples_per_train_s": sum(r["samples"] for r in steps) / sum(r["train_s"] for r in steps),
            "sync_s": sum(r["weight_sync_s"] for r in steps) / len(steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.toml")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets: list[str] = ["learner.save_final=false", "learner.val_every=0"]
        if args.smoke or not (SMOLLM2 / "config.json").is_file():
            args.config = REPO / "configs" / "tiny_cpu.toml"
            args.seconds = min(args.seconds, 10.0) if args.smoke else args.seconds
            sets += tiny_sets(tmp_path)
        runs = {}
        for g in (1, 2):
            print(f"{g} generator(s), {args.seconds:.0f}s", flush=True)
            runs[g] = run_up(args.config, tmp_path / f"g{g}", sets + port_sets() + [f"rollout.num_generators={g}"],
                             seconds=args.seconds, label=f"{g} gen")
    measured = [{"generators": g, **summarise(run)} for g, run in runs.items()]
    r = rates(runs[1])
    model_rows = []
    for G in (1, 2, 4, 8):
        for K in (1, 2, 4, 8):
            gen_t = r["samples_per_step"] / (G * r["gen_samples_per_busy_s"])
            learn_t = r["samples_per_step"] / (K * r["learner_samples_per_train_s"]) + r["sync_s"]
            step = max(gen_t, learn_t)
            model_rows.append({"generators": G, "learner_ranks": K, "step_s": step,
                               "samples_per_s": r["samples_per_step"] / step,
                               "bound_by": "generation" if gen_t >= learn_t else "learner"})
    ratio = measured[1]["samples_per_s"] / measured[0]["samples_per_s"]
    md = "Measured (same machine, same budget):\n\n" + table(
        measured, ["generators", "steps", "samples_per_s", "generator_busy", "learner_busy"])
    md += (f"\n\n**2 generators / 1 generator samples/s = {ratio:.2f}** (same cores: per core-second too)\n\n"
           f"Component rates with 1 generator: {r['gen_samples_per_busy_s']:.2f} samples per generator-busy second, "
           f"{r['learner_samples_per_train_s']:.2f} samples per learner-training second, {r['sync_s']:.2f} s per "
           f"sync, {r['samples_per_step']:.0f} samples per step.\n\nProjected asynchronous step time, each "
           f"generator and learner rank on its own cores (a model, not a measurement):\n\n"
           + table(model_rows, ["generators", "learner_ranks", "step_s", "samples_per_s", "bound_by"]))
    write_results(args.out, "scaling", {"measured": measured, "rates": r, "model": model_rows,
                                        "two_vs_one": ratio}, md)


if __name__ == "__main__":
    main()
