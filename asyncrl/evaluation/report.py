"""An evaluation report: per set and per ``data_source`` metrics, as JSON and as a markdown table.

    report = build_report(meta, {"test": results}, ks=[1, 2, 4])
    write_report(report, Path("runs/eval/tiny"))   # eval.json, eval.md
    print(markdown_table(report))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asyncrl.evaluation.metrics import PromptResult, by_data_source, summarize

ALL = "(all)"


def set_summary(results: Sequence[PromptResult], ks: Sequence[int], rows: bool = True) -> dict[str, Any]:
    """One set: ``overall`` metrics, ``by_data_source`` metrics, and (``rows``) each prompt's rewards
    and answers."""
    out: dict[str, Any] = {"overall": summarize(results, ks),
                           "by_data_source": {ds: summarize(rs, ks) for ds, rs in by_data_source(results).items()}}
    if rows:
        out["rows"] = [{k: v for k, v in asdict(r).items() if k != "extra"} | r.extra for r in results]
    return out


def build_report(meta: dict[str, Any], sets: Mapping[str, Sequence[PromptResult]], ks: Sequence[int],
                 set_meta: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole report: ``meta`` (model, sampling, ...), ``ks``, and one :func:`set_summary` per set
    (with ``set_meta[name]``, e.g. its path, merged in)."""
    return {**meta, "ks": list(ks),
            "sets": {name: {**(set_meta or {}).get(name, {}), **set_summary(rs, ks)} for name, rs in sets.items()}}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(report: dict[str, Any]) -> str:
    """One row per set (``(all)``) and, where a set mixes sources, one per ``data_source``."""
    ks = report["ks"]
    n = next(iter(report["sets"].values()))["overall"]["n"] if report["sets"] else 0
    cols = ["greedy_accuracy", f"mean@{n}", *(f"pass@{k}" for k in ks), f"maj@{n}"]
    head = ["set", "data_source", "prompts", "greedy acc", f"mean@{n}", *(f"pass@{k}" for k in ks), f"maj@{n}",
            "no answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in report["sets"].items():
        scopes = [(ALL, s["overall"])]
        if len(s["by_data_source"]) > 1:
            scopes += list(s["by_data_source"].items())
        else:
            scopes = [(next(iter(s["by_data_source"])), s["overall"])]
        for ds, m in scopes:
            no_answer = "—" if m[f"maj@{n}"] is None else str(len(m["no_answer"]))
            cells = [name, ds, str(m["prompts"]), *(_fmt(m[c]) for c in cols), no_answer]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path, stem: str = "eval") -> tuple[Path, Path]:
    """``out/<stem>.json`` (everything, rows included) and ``out/<stem>.md`` (the table and how it was
    made); returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    header = [f"# Evaluation of {report.get('model', '?')}", ""]
    for key in ("model_note", "n", "temperature", "top_p", "max_new_tokens", "seed", "dtype", "generate_s", "date",
                "machine"):
        if report.get(key) is not None:
            header.append(f"- {key}: {report[key]}")
    md.write_text("\n".join(header) + "\n\n" + markdown_table(report))
    return js, md
