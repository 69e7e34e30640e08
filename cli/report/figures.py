"""The report's figures, each built from a :class:`~cli.report.data.RunData` with matplotlib's object API
(no pyplot state, no display: the Agg canvas). A figure whose data the run does not have is a
:class:`Chart` with a note instead of a plot.

    for chart in charts(run): print(chart.title, chart.note or "drawn")
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cli.report.data import RunData, learner_seconds, median, number, series
from cli.report.overlap import Overlap, lanes, of_kind, overlap

COLORS = {"generate": "#59a14f", "train": "#4e79a7", "wait": "#d9d9d9", "sync": "#e15759",
          "validate": "#b07aa1", "score": "#f28e2b"}
OTHER_COLOR = "#9c755f"
DRAW_ORDER = ("wait", "generate", "validate", "train", "sync")  # later kinds on top


@dataclass
class Chart:
    name: str  # file stem of its PNG
    title: str
    figure: Figure | None = None
    note: str = ""  # why it is missing, or what to read off it


def _fig(rows: int = 1, cols: int = 1, height: float = 3.6) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(11, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, list(axes.flat)


def _label(ax: Any, title: str, legend: bool = True, xlabel: str = "step") -> None:
    """A step-axis panel's title, integer x axis and legend."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if legend:
        ax.legend(fontsize=8)


def _noisy(ax: Any, xs: list[float], ys: list[float], color: str, label: str) -> None:
    """A per-step series: faint, under its rolling mean (alone and solid when too short to smooth)."""
    w = _window(len(ys))
    if w == 1:
        ax.plot(xs, ys, color=color, lw=2, marker=".", label=f"{label} (per step)")
        return
    ax.plot(xs, ys, color=color, alpha=0.3, lw=1, label=f"{label} (per step)")
    ax.plot(xs, rolling(ys, w), color=color, lw=2, label=f"{label} ({w}-step mean)")


def rolling(ys: list[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y - (ys[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def _window(n: int) -> int:
    return max(1, min(20, n // 10))


def reward(run: RunData) -> Chart:
    chart = Chart("reward", "Reward and validation")
    xs, ys = series(run.steps, "reward_mean")
    vals = {k: series(run.vals, k) for k in ("val_accuracy", "val_reward_mean")}
    vals = {k: v for k, v in vals.items() if v[0]}
    if not xs and not vals:
        chart.note = "no reward_mean or val_accuracy / val_reward_mean in metrics.jsonl"
        return chart
    fig, (ax,) = _fig()
    if xs:
        _noisy(ax, xs, ys, COLORS["train"], "train reward_mean")
    for (k, (vx, vy)), color in zip(vals.items(), ("#f28e2b", "#76b7b2"), strict=False):
        ax.plot(vx, vy, marker="o", color=color, lw=1.5, label=k)
    _label(ax, "")
    ax.set_ylabel("reward / accuracy")
    chart.figure = fig
    return chart


def validation_sets(run: RunData) -> Chart:
    """One panel per metric of the ``val/<set>/<metric>`` keys, one line per set."""
    chart = Chart("validation_sets", "Validation sets")
    metrics: dict[str, set[str]] = {}
    for r in run.vals:
        for k in r:
            m = re.fullmatch(r"val/([^/]+)/(.+)", k)
            if m and number(r[k]) is not None:
                metrics.setdefault(m.group(2), set()).add(m.group(1))
    if not metrics:
        chart.note = "no val/<set>/<metric> keys (one validation set: see the reward figure)"
        return chart
    names = sorted(metrics, key=lambda m: (not m.startswith("acc"), m))[:6]
    cols = min(2, len(names))
    fig, axes = _fig((len(names) + cols - 1) // cols, cols, height=3.2)
    for ax, metric in zip(axes, names, strict=False):
        for s in sorted(metrics[metric]):
            ax.plot(*series(run.vals, f"val/{s}/{metric}"), marker="o", lw=1.5, label=s)
        _label(ax, metric)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if len(metrics) > len(names):
        chart.note = f"first {len(names)} of {len(metrics)} metrics shown"
    chart.figure = fig
    return chart


def kl_entropy(run: RunData) -> Chart:
    chart = Chart("kl_entropy", "KL and entropy")
    keys = sorted({k for r in run.steps for k in r if "kl" in k and k != "kl_coef" and number(r[k]) is not None})
    ent = series(run.steps, "entropy")
    if not keys and not ent[0]:
        chart.note = "no KL or entropy keys in the step records"
        return chart
    fig, axes = _fig(1, 2 if keys and ent[0] else 1)
    if keys:
        ax = axes[0]
        for k in keys:
            ax.plot(*series(run.steps, k), lw=1.2, label=k)
        _label(ax, "KL estimates")
    if ent[0]:
        ax = axes[-1]
        ax.plot(*ent, color="#f28e2b", lw=1.2)
        _label(ax, "policy entropy (nats / token)", legend=False)
    chart.figure = fig
    return chart


def staleness(run: RunData) -> Chart:
    chart = Chart("staleness", "Staleness")
    hist: Counter[int] = Counter()
    for r in run.steps:
        h = r.get("staleness_hist")
        if isinstance(h, dict):
            hist.update({int(k): int(v) for k, v in h.items() if str(k).lstrip("-").isdigit() and number(v)})
    mean, mx = series(run.steps, "staleness_mean"), series(run.steps, "staleness_max")
    if not hist and not mean[0]:
        chart.note = "no staleness_hist or staleness_mean in the step records"
        return chart
    fig, axes = _fig(1, 2 if hist and mean[0] else 1)
    if hist:
        ax, n = axes[0], sum(hist.values())
        lags = sorted(hist)
        ax.bar(lags, [hist[k] / n for k in lags], color=COLORS["train"], width=0.7)
        ax.set_xticks(lags)
        ax.set_title(f"trained samples by policy-version lag ({n} samples)", fontsize=10)
        ax.set_xlabel("staleness (learner version - sample version)")
        ax.set_ylabel("fraction of samples")
    else:
        chart.note = "no staleness_hist in the step records (older run): per-step mean and max only"
    if mean[0]:
        ax = axes[-1]
        ax.plot(*mean, lw=2, color=COLORS["train"], label="mean")
        ax.plot(*mx, lw=1.5, ls="--", color=COLORS["sync"], label="max")  # dashed: the mean shows through
        _label(ax, "per step")
    chart.figure = fig
    return chart


def throughput(run: RunData) -> Chart:
    chart = Chart("throughput", "Throughput")
    panels = [(k, series(run.steps, k)) for k in ("samples_per_s", "tokens_per_s")]
    panels = [(k, s) for k, s in panels if s[0]]
    if not panels:
        chart.note = "no samples_per_s / tokens_per_s in the step records"
        return chart
    fig, axes = _fig(1, len(panels))
    t = learner_seconds(run.steps)
    for ax, (k, (xs, ys)) in zip(axes, panels, strict=False):
        _noisy(ax, xs, ys, COLORS["generate"], k)
        total = sum(number(r.get(k.split("_per_s")[0])) or 0.0 for r in run.steps)
        if t:
            ax.axhline(total / t, color="black", ls="--", lw=1, label=f"whole run, validation included: "
                                                                         f"{total / t:.3g}")
        _label(ax, k.replace("_per_s", " / s"))
    chart.figure = fig
    return chart


def weight_sync(run: RunData) -> Chart:
    chart = Chart("weight_sync", "Weight-sync pauses")
    lx, ly = series([r for r in run.steps if (number(r.get("weight_sync_s")) or 0) > 0], "weight_sync_s")
    gens = {g: [t1 - t0 for t0, t1 in of_kind(s, "sync")] for g, s in run.spans.items() if g.startswith("generator-")}
    gens = {g: d for g, d in gens.items() if d}
    if not ly and not gens:
        chart.note = "no weight_sync_s in the step records and no generator sync spans"
        return chart
    fig, (ax,) = _fig()
    if ly:
        ax.plot(range(1, len(ly) + 1), ly, lw=1.5, marker=".", color=COLORS["train"],
                label=f"learner: gather + send (median {median(ly):.3f} s)")
    for g in [name for name in lanes(run.spans) if name in gens]:
        d = gens[g]
        ax.plot(range(1, len(d) + 1), d, lw=1, marker=".", alpha=0.8, label=f"{g}: paused (median {median(d):.3f} s)")
    _label(ax, "", xlabel="weight sync #")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    chart.figure = fig
    return chart


def timeline(run: RunData) -> Chart:
    """Lanes over wall time: the whole run, then a few learner steps from the middle of it."""
    chart = Chart("timeline", "Timeline: generation, training and weight syncs")
    ov = overlap(run.spans)
    if ov is None:
        chart.note = ("no timeline/learner.jsonl with train spans and timeline/generator-*.jsonl "
                      "(runs before the timeline was recorded)")
        return chart
    names = lanes(run.spans)
    fig, (whole, zoom) = _fig(2, 1, height=0.55 * len(names) + 1.4)
    _lanes(whole, run, names, ov, None)
    whole.set_title("whole run", fontsize=10)
    trains = of_kind(run.spans["learner"], "train")
    k = max(0, len(trains) // 2 - 1)
    window = (trains[k][0] - 0.2, trains[min(k + 3, len(trains) - 1)][1] + 0.2)
    _lanes(zoom, run, names, ov, window)
    zoom.set_title(f"zoom: learner steps {k + 1}-{min(k + 4, len(trains))} of {len(trains)} (by train span)",
                   fontsize=10)
    kinds = sorted({s[0] for ss in run.spans.values() for s in ss}, key=_order)
    fig.legend(handles=[Patch(color=COLORS.get(k, OTHER_COLOR), label=k) for k in kinds], loc="outside upper center",
               ncols=len(kinds), fontsize=9, frameon=False)
    chart.figure = fig
    chart.note = overlap_sentence(ov)
    return chart


def _order(kind: str) -> int:
    return DRAW_ORDER.index(kind) if kind in DRAW_ORDER else -1


def _lanes(ax: Any, run: RunData, names: list[str], ov: Overlap, window: tuple[float, float] | None) -> None:
    for i, name in enumerate(names):
        y = len(names) - 1 - i
        spans = run.spans[name]
        for kind in sorted({s[0] for s in spans}, key=_order):
            bars = [(t0 - ov.start, t1 - t0) for k, t0, t1 in spans if k == kind
                    and (window is None or (t1 > window[0] and t0 < window[1]))]
            edge = {"edgecolor": COLORS["sync"], "linewidth": 0.6} if kind == "sync" else {"linewidth": 0}
            ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=COLORS.get(kind, OTHER_COLOR), **edge)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("wall time since the first span (s)")
    ax.grid(True, axis="y", alpha=0)
    if window is not None:
        ax.set_xlim(window[0] - ov.start, window[1] - ov.start)
    else:
        ax.set_xlim(0, ov.wall_s)


def overlap_sentence(ov: Overlap) -> str:
    fr = ov.busy_fraction
    busy = (", ".join(f"{g} busy {fr[g]:.0%}" for g in lanes(dict.fromkeys(fr, []))) if len(fr) <= 4 else
            f"{len(fr)} generators busy {min(fr.values()):.0%}-{max(fr.values()):.0%} (mean "
            f"{sum(fr.values()) / len(fr):.0%})")
    return (f"Some generator was busy during {ov.train_overlap:.0%} of the learner's {ov.train_s:.1f} s of training, "
            f"and {ov.generation_hidden:.0%} of the {ov.busy_s:.1f} s with some generator busy (validation excluded) "
            f"fell within training (generation hidden by asynchrony; a synchronous loop scores 0% on both). Over the "
            f"{ov.wall_s:.0f} s timeline: {busy}; the learner waited {ov.learner_wait_s:.1f} s for batches and "
            f"spent {ov.learner_sync_s:.1f} s publishing weights.")


FIGURES: tuple[Callable[[RunData], Chart], ...] = (reward, validation_sets, kl_entropy, staleness, throughput,
                                                   weight_sync, timeline)


def charts(run: RunData) -> list[Chart]:
    return [make(run) for make in FIGURES]
