"""Where a step's time goes: the learner's phases from its step records, the other processes' from
their timeline spans (:mod:`asyncrl.timeline`), each as seconds per step over the steady steps.

Every row is a mean over the steps after ``skip`` warm-up steps: the learner's from its step records
(shares of its mean step), the others' totals over the same wall-clock window (from the first counted
step's ``wait`` span to the learner's last span, its validations left out) divided by the window's
steps, so a generator's rows add up to the learner's step::

    rows = breakdown(load_run(Path("runs/quickstart")))
    print(markdown(rows))
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from cli.report.data import RunData, number
from cli.report.overlap import Interval, generator_busy, intersect, lanes, merge, of_kind, subtract, total


@dataclass(frozen=True)
class Row:
    process: str  # learner, generator-0, reward-0, transport
    part: str
    seconds: float  # per step
    share: float | None  # of the mean learner step (learner rows only)


LEARNER = [  # (label, how the step record gives it)
    ("wait for a batch of scored groups", "wait_s"),
    ("no-grad passes (reference, old log-probs, critic values)", "time_phase_a_s"),
    ("forward + losses", "time_forward_s"),
    ("backward", "time_backward_s"),
    ("optimizer step", "time_optimizer_s"),
    ("rest of train (batches, advantages, rank exchanges)", "_train_rest"),
    ("weight sync (gather + send)", "weight_sync_s"),
    ("records, sample dumps, validation", "_outside"),
]


def _learner_parts(rec: dict) -> dict[str, float]:
    v = {k: number(rec.get(k)) or 0.0 for _, k in LEARNER if not k.startswith("_")}
    train, step = number(rec.get("train_s")) or 0.0, number(rec.get("step_s")) or 0.0
    v["_train_rest"] = max(0.0, train - sum(v[k] for k in ("time_phase_a_s", "time_forward_s", "time_backward_s",
                                                          "time_optimizer_s")))
    v["_outside"] = max(0.0, step - v["wait_s"] - train - v["weight_sync_s"])
    return v


def _window(run: RunData, skip: int) -> tuple[Interval, int] | None:
    """Wall-clock window of the steps after ``skip`` (by the learner's train spans) and its step count."""
    learner = run.spans.get("learner", [])
    trains = of_kind(learner, "train")
    if len(trains) <= skip:
        return None
    waits = [t0 for t0, t1 in of_kind(learner, "wait") if t1 <= trains[skip][0] + 1e-6]
    start = waits[-1] if waits else trains[skip][0]
    return (start, max(s[2] for s in learner)), len(trains) - skip


def breakdown(run: RunData, skip: int = 2) -> list[Row]:
    """The table's rows; empty when the run has no more than ``skip`` steps."""
    steps = [r for r in run.steps[skip:] if number(r.get("step_s"))]
    if not steps:
        return []
    parts = [_learner_parts(r) for r in steps]
    step_s = _mean([number(r["step_s"]) or 0.0 for r in steps])
    rows = [Row("learner", "step (wall)", step_s, 1.0)]
    rows += [Row("learner", label, m, m / step_s if step_s else None)
             for label, key in LEARNER if (m := _mean([p[key] for p in parts])) > 0 or not key.startswith("_")]
    win = _window(run, skip)
    if win is None:
        return rows
    (a, b), n = win
    span = subtract([(a, b)], of_kind(run.spans["learner"], "validate"))
    train = intersect(of_kind(run.spans["learner"], "train"), span)
    gens = generator_busy(run.spans)
    for name in [g for g in lanes(run.spans) if g in gens]:
        busy = intersect(gens[name], span)
        paused = intersect(of_kind(run.spans[name], "sync"), span)
        rows += [Row(name, "generating (requests in flight)", total(busy) / n, None),
                 Row(name, "  of which while the learner trained", total(intersect(busy, train)) / n, None),
                 Row(name, "paused for a weight sync", total(paused) / n, None),
                 Row(name, "idle", total(subtract(span, merge(busy + paused))) / n, None)]
    for name in lanes(run.spans):
        if name.startswith("reward-"):
            rows.append(Row(name, "scoring", total(intersect(of_kind(run.spans[name], "score"), span)) / n, None))
    moved = [number(r.get("transport_s_total")) for r in run.steps]
    if len(run.steps) > skip and moved[-1] is not None and moved[skip - 1 if skip else 0] is not None:
        first = moved[skip - 1] if skip else 0.0
        rows.append(Row("learner", "receive + decode trajectories (I/O thread, overlaps the above)",
                        ((moved[-1] or 0.0) - (first or 0.0)) / len(steps), None))
    return rows


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def seconds(x: float) -> str:
    return f"{x:.3g}" if x >= 0.001 else "< 0.001"


def markdown(rows: list[Row]) -> str:
    lines = ["| process | part | s / step | share of the learner step |", "|---|---|---|---|"]
    lines += [f"| {r.process} | {r.part} | {seconds(r.seconds)} | {'' if r.share is None else f'{r.share:.0%}'} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m cli.report.breakdown RUN_DIR [SKIP]
    from cli.report.data import load_run

    print(markdown(breakdown(load_run(Path(sys.argv[1])), int(sys.argv[2]) if len(sys.argv) > 2 else 2)))
