"""How much generation and training overlapped, from the timeline spans (:mod:`asyncrl.timeline`).

A generator counts as busy while it has requests in flight (``generate``) and is not paused for a
weight update (``sync``). Two figures, both 0 for a synchronous loop: the fraction of the learner's
``train`` time during which at least one generator was busy (near 1 when generation keeps up with
training), and the fraction of generation (outside the learner's ``validate`` spans, whose generation
nothing trains on) that ran while the learner trained (near 1 when generation hides behind training;
with fast generators and a slow learner only this one is high)::

    o = overlap(run.spans)
    print(f"{o.train_overlap:.0%} of training ran while a generator was busy")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Interval = tuple[float, float]
Spans = dict[str, list[tuple[str, float, float]]]


def merge(intervals: list[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same time."""
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def intersect(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    """The time in both (inputs merged)."""
    xs, ys = merge(xs), merge(ys)
    out, i, j = [], 0, 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    """The time in ``xs`` but not in ``ys``."""
    out = []
    ys = merge(ys)
    for a, b in merge(xs):
        for c, d in ys:
            if d <= a or c >= b:
                continue
            if c > a:
                out.append((a, c))
            a = max(a, d)
        if a < b:
            out.append((a, b))
    return out


def total(xs: list[Interval]) -> float:
    return sum(b - a for a, b in merge(xs))


def lanes(spans: Spans) -> list[str]:
    """The learner first, then generators by index, then any other process."""
    def key(name: str) -> tuple[int, int, str]:
        m = re.fullmatch(r"generator-(\d+)", name)
        return (0, 0, name) if name == "learner" else (1, int(m.group(1)), name) if m else (2, 0, name)
    return sorted(spans, key=key)


def of_kind(spans: list[tuple[str, float, float]], kind: str) -> list[Interval]:
    return [(t0, t1) for k, t0, t1 in spans if k == kind]


def generator_busy(spans: Spans) -> dict[str, list[Interval]]:
    """Each generator's busy time: ``generate`` minus its ``sync`` pauses."""
    return {name: subtract(of_kind(s, "generate"), of_kind(s, "sync"))
            for name, s in spans.items() if name.startswith("generator-")}


@dataclass(frozen=True)
class Overlap:
    start: float  # wall clock of the first span
    wall_s: float  # first span start to last span end
    train_s: float  # learner training
    train_overlap: float  # fraction of train_s with at least one generator busy
    busy_s: float  # time with at least one generator busy, validation excluded
    generation_hidden: float  # fraction of busy_s during learner training
    busy_fraction: dict[str, float]  # generator -> busy / wall_s
    learner_sync_s: float
    learner_wait_s: float


def overlap(spans: Spans) -> Overlap | None:
    """None without both a learner lane with ``train`` spans and a generator lane."""
    train = merge(of_kind(spans.get("learner", []), "train"))
    busy = generator_busy(spans)
    if not train or not busy:
        return None
    start = min(s[1] for ss in spans.values() for s in ss)
    wall = max(s[2] for ss in spans.values() for s in ss) - start
    any_busy = merge([iv for ivs in busy.values() for iv in ivs])
    learner = spans["learner"]
    train_s, both = total(train), total(intersect(train, any_busy))
    busy_s = total(subtract(any_busy, of_kind(learner, "validate")))
    return Overlap(start=start, wall_s=wall, train_s=train_s, train_overlap=both / train_s if train_s > 0 else 0.0,
                   busy_s=busy_s, generation_hidden=both / busy_s if busy_s > 0 else 0.0,
                   busy_fraction={g: total(ivs) / wall if wall > 0 else 0.0 for g, ivs in busy.items()},
                   learner_sync_s=total(of_kind(learner, "sync")), learner_wait_s=total(of_kind(learner, "wait")))
