"""What a run directory holds, read for the report: step records, validation records, timeline spans,
generator stats, supervisor events and resolved configs. Missing files give empty fields (the report
notes what it could not draw); only a missing or empty ``metrics.jsonl`` is an error.

    run = load_run(Path("runs/quickstart"))
    steps, rewards = series(run.steps, "reward_mean")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncrl.timeline import FOLDER as TIMELINE_FOLDER


class ReportError(ValueError):
    """The run directory has nothing to report on (exit 2)."""


@dataclass
class RunData:
    run_dir: Path
    steps: list[dict[str, Any]]  # training step records (they carry ``reward_mean``), one per step
    vals: list[dict[str, Any]]  # records carrying validation keys (``val_*`` or ``val/<set>/...``)
    spans: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)  # lane -> (kind, t0, t1)
    generators: dict[str, dict[str, Any]] = field(default_factory=dict)  # rollout-<i> -> last stats line
    supervisor: list[dict[str, Any]] = field(default_factory=list)
    resolved: dict[str, Any] = field(default_factory=dict)  # process name -> its resolved config
    peaks: dict[str, Any] = field(default_factory=dict)  # the learner's "peaks" record (learner/mfu.py)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, skipping lines cut short (a process killed mid-write)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def is_val_key(key: str) -> bool:
    return key.startswith("val_") or key.startswith("val/")


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null from NaN, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2 if s else 0.0


def learner_seconds(steps: list[dict[str, Any]]) -> float | None:
    """The learner's time over the step records: the sum of ``step_s`` (right across resumes, where
    ``time_s`` starts again from 0), else the last ``time_s``."""
    each = [number(r.get("step_s")) for r in steps]
    if steps and all(x is not None for x in each):
        return sum(x for x in each if x is not None)
    return number(steps[-1].get("time_s")) if steps else None


def series(records: list[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """``(x values, key values)`` over the records where both are numbers."""
    xs, ys = [], []
    for r in records:
        a, b = number(r.get(x)), number(r.get(key))
        if a is not None and b is not None:
            xs.append(a)
            ys.append(b)
    return xs, ys


def load_run(run_dir: Path) -> RunData:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} not found: is {run_dir} a run directory (asyncrl up --run-dir)?")
    records = read_jsonl(path)
    by_step: dict[int, dict[str, Any]] = {}
    vals, peaks = [], {}
    for r in records:
        if any(is_val_key(k) for k in r):
            vals.append(r)
        if r.get("event") == "peaks":
            peaks = r
        if "reward_mean" in r and isinstance(r.get("step"), int):
            by_step[r["step"]] = r  # a resumed run may repeat a step: the last record wins
    if not by_step and not vals:
        raise ReportError(f"{path} has no RL step records (reward_mean) or validation records (val_*): empty, the "
                          f"run died before its first step, or it is not an `asyncrl up` run (SFT, reward model)")
    run = RunData(run_dir, [by_step[s] for s in sorted(by_step)], vals, peaks=peaks)
    run.spans = _spans(run_dir / TIMELINE_FOLDER)
    for p in sorted(run_dir.glob("rollout-*.jsonl")):
        lines = read_jsonl(p)
        if lines:
            run.generators[p.stem] = lines[-1]
    if (run_dir / "supervisor.jsonl").is_file():
        run.supervisor = read_jsonl(run_dir / "supervisor.jsonl")
    for p in sorted((run_dir / "resolved").glob("*.json")):
        try:
            run.resolved[p.stem] = json.loads(p.read_text())
        except ValueError:
            continue
    return run


def _spans(folder: Path) -> dict[str, list[tuple[str, float, float]]]:
    out: dict[str, list[tuple[str, float, float]]] = {}
    for p in sorted(folder.glob("*.jsonl")):
        spans = []
        for s in read_jsonl(p):
            t0, t1 = number(s.get("t0")), number(s.get("t1"))
            if isinstance(s.get("kind"), str) and t0 is not None and t1 is not None and t1 >= t0:
                spans.append((s["kind"], t0, t1))
        if spans:
            out[p.stem] = sorted(spans, key=lambda s: s[1])
    return out
