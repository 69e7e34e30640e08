"""``asyncrl report RUN_DIR``: PNG figures and one self-contained HTML page about a run.

Reads ``metrics.jsonl`` (required), the timeline spans every process wrote (:mod:`asyncrl.timeline`),
``rollout-*.jsonl``, ``supervisor.jsonl`` and ``resolved/``; a figure whose data is missing is replaced by
a note. matplotlib is imported here only, not by any training process::

    page = build_report(Path("runs/quickstart"))   # runs/quickstart/report/report.html
"""

from __future__ import annotations

from pathlib import Path

from cli.report.data import ReportError, load_run

__all__ = ["ReportError", "build_report"]


def build_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``<out>/<figure>.png`` and ``<out>/report.html`` (default ``<run_dir>/report``); return the page.
    Raises :class:`ReportError` when ``metrics.jsonl`` is missing or has no records."""
    run = load_run(run_dir)
    from cli.report.figures import charts
    from cli.report.page import png_bytes, render, summary

    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn: list = []
    for chart in charts(run):
        png, path = None, out / f"{chart.name}.png"
        if chart.figure is not None:
            png = png_bytes(chart.figure)
            path.write_bytes(png)
        else:
            path.unlink(missing_ok=True)  # drawn by an earlier report of this run: no longer true
        drawn.append((chart, png))
    page = out / "report.html"
    page.write_text(render(run, summary(run), drawn))
    return page
