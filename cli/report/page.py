"""The report's summary table and its one self-contained HTML page (images as base64 data URIs, inline
CSS, no scripts and no external resources: it opens from disk, a mail attachment or a CI artifact).

    html = render(run, summary(run), [(chart, png_bytes), ...])
"""

from __future__ import annotations

import base64
import io
import json
import re
from html import escape

from matplotlib.figure import Figure

from cli.report.breakdown import breakdown, seconds
from cli.report.data import RunData, learner_seconds, median, number, series
from cli.report.figures import Chart, rolling
from cli.report.overlap import of_kind, overlap

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 28px 0 6px; }
.sub { color: #666; font-size: 13px; }
table.summary { border-collapse: collapse; font-size: 14px; margin-top: 12px; }
table.summary td { padding: 4px 14px 4px 0; border-bottom: 1px solid #eee; vertical-align: top; }
table.summary td:first-child { color: #555; white-space: nowrap; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: 13px; margin: 4px 0 8px; }
.missing { color: #8a6d3b; background: #fcf8e3; padding: 6px 10px; font-size: 13px; }
pre { background: #f6f8fa; padding: 10px; font-size: 12px; overflow-x: auto; }
details { margin: 6px 0; } summary { cursor: pointer; }
"""


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _final_best(records: list[dict], key: str, smooth: bool) -> str | None:
    _, ys = series(records, key)
    if not ys:
        return None
    if not smooth:
        return f"{_fmt(ys[-1])} final, {_fmt(max(ys))} best"
    w = max(1, min(10, len(ys)))
    return f"{_fmt(sum(ys[-w:]) / w)} final ({w}-step mean), {_fmt(max(rolling(ys, w)))} best {w}-step mean"


def summary(run: RunData) -> list[tuple[str, str]]:
    """``(label, value)`` rows; a row whose data the run lacks is left out."""
    last = run.steps[-1] if run.steps else {}
    rows: list[tuple[str, str | None]] = [("run directory", str(run.run_dir))]
    t = learner_seconds(run.steps)
    rows.append(("steps", f"{len(run.steps)} (last step {last['step']})" if run.steps else "0 (validation only)"))
    rows.append(("learner wall time (sum of step times)", f"{t:.0f} s ({t / 60:.1f} min)" if t else None))
    rows.append(("train reward_mean", _final_best(run.steps, "reward_mean", smooth=True)))
    rows.append(("val_accuracy", _final_best(run.vals, "val_accuracy", smooth=False)))
    for key in sorted({k for r in run.vals for k in r if re.fullmatch(r"val/[^/]+/accuracy", k)}):
        rows.append((key, _final_best(run.vals, key, smooth=False)))
    for key, unit in (("samples", "samples/s"), ("tokens", "tokens/s")):
        n = sum(number(r.get(key)) or 0.0 for r in run.steps)
        rows.append((unit + " (whole run)", f"{n / t:.3g}" if t and n else None))
    rows += efficiency_rows(run)
    syncs = [v for r in run.steps if (v := number(r.get("weight_sync_s")))]
    rows.append(("weight syncs: median learner time", f"{median(syncs):.3f} s over {len(syncs)} syncs" if syncs
                 else None))
    pauses = [t1 - t0 for g, s in run.spans.items() if g.startswith("generator-") for t0, t1 in of_kind(s, "sync")]
    rows.append(("weight syncs: median generator pause", f"{median(pauses):.3f} s" if pauses else None))
    ov = overlap(run.spans)
    rows.append(("training overlapped by generation", f"{ov.train_overlap:.0%} of the learner's training time"
                 if ov else None))
    rows.append(("generation hidden behind training", f"{ov.generation_hidden:.0%} of the time some generator was busy"
                 if ov else None))
    restarts = [e for e in run.supervisor if e.get("event") == "restart"]
    who = sorted({str(e.get("process")) for e in restarts})
    rows.append(("process restarts (supervisor.jsonl)", f"{len(restarts)}" + (f" ({', '.join(who)})" if who else "")))
    for key in ("messages_dropped", "samples_lost", "stale_dropped"):
        v = number(last.get(key))
        rows.append((key.replace("_", " "), f"{v:.0f}" if v is not None else None))
    for g, s in run.generators.items() if ov is None else ():  # older runs: no timeline, the generators' stats
        busy, total = number(s.get("busy_s")), number(s.get("time_s"))
        if busy is not None and total:
            paused = number(s.get("paused_s")) or 0.0
            rows.append((f"{g} busy (since its start, engine start-up included)",
                         f"{busy / total:.0%} of {total:.0f} s; {s.get('syncs', 0)} syncs paused it {paused:.1f} s"))
    return [(k, v) for k, v in rows if v is not None]


def efficiency_rows(run: RunData) -> list[tuple[str, str | None]]:
    """Learner MFU, generator FLOP/s and pipeline efficiency against the run's measured peaks
    (learner/mfu.py; the FLOP convention is asyncrl/flops.py's)."""
    pk = run.peaks
    mfu = [v for r in run.steps if (v := number(r.get("learner_mfu"))) is not None]
    eff = [v for r in run.steps if (v := number(r.get("pipeline_efficiency"))) is not None]
    gmfu = [v for r in run.steps if (v := number(r.get("gen_mfu"))) is not None]
    gtok = [v for r in run.steps if (v := number(r.get("gen_tokens_per_s"))) is not None]
    rows: list[tuple[str, str | None]] = [
        ("learner MFU (median step)", f"{median(mfu):.1%} of the measured {pk.get('learner_dtype', '?')} peak "
         f"({pk.get('peak_learner_gflops', 0):.0f} GFLOP/s on {pk.get('learner_threads', '?')} thread(s))"
         if mfu else None),
        ("generator MFU (median step)", f"{median(gmfu):.1%} of one generator's {pk.get('gen_dtype', '?')} peak, "
         f"{median(gtok):.0f} tokens/s while generating the step's samples" if gmfu and gtok else None),
        ("pipeline efficiency (median step)", f"{median(eff):.1%} of the samples/s the FLOP limit of "
         f"{pk.get('cores', '?')} cores allows" if eff else None)]
    ov = overlap(run.spans)
    gen = sum(number(r.get("gen_tflop")) or 0.0 for r in run.steps)
    if ov is not None and gen and ov.busy_s and pk.get("peak_gen_all_gflops"):
        rate = gen * 1e3 / ov.busy_s  # GFLOP/s while some generator was busy
        share = rate / pk["peak_gen_all_gflops"]
        rows.append(("generation FLOP rate (while busy)", f"{rate:.1f} GFLOP/s = {share:.1%} of the "
                     f"{pk.get('gen_dtype')} peak on all cores (decoding is memory-bound)"))
    return rows


def breakdown_html(run: RunData) -> list[str]:
    """The "where a step's time goes" table (cli/report/breakdown.py), or a note why it is missing."""
    out = ['<h2 id="breakdown">Where a step\'s time goes</h2>']
    rows = breakdown(run)
    if not rows:
        return out + ['<p class="missing">Not shown: the run has no steps past the first two (warm-up).</p>']
    out.append('<table class="summary"><tr><td><b>process</b></td><td><b>part</b></td><td><b>s / step</b></td>'
               '<td><b>share of the learner step</b></td></tr>')
    out += [f"<tr><td>{escape(r.process)}</td><td>{escape(r.part)}</td><td>{seconds(r.seconds)}</td>"
            f"<td>{'' if r.share is None else f'{r.share:.0%}'}</td></tr>" for r in rows]
    out.append("</table>")
    out.append('<p class="note">Means over the steps after the first two; generator and reward rows from the '
               "timeline over the same window, validations left out (see cli/report/breakdown.py).</p>")
    return out


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render(run: RunData, rows: list[tuple[str, str]], charts: list[tuple[Chart, bytes | None]]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>asyncrl report: {escape(run.run_dir.name)}</title>", f"<style>{CSS}</style></head><body>",
           f"<h1>asyncrl run report: {escape(run.run_dir.name)}</h1>",
           '<div class="sub">written by <code>asyncrl report</code> from metrics.jsonl, timeline/, rollout-*.jsonl, '
           "supervisor.jsonl and resolved/</div>", '<table class="summary">']
    out += [f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows]
    out.append("</table>")
    out += breakdown_html(run)
    for chart, png in charts:
        out.append(f'<h2 id="{escape(chart.name)}">{escape(chart.title)}</h2>')
        if png is None:
            out.append(f'<p class="missing">Not drawn: {escape(chart.note)}</p>')
            continue
        out.append(f'<img src="{png_uri(png)}" alt="{escape(chart.title)}">')
        if chart.note:
            out.append(f'<p class="note">{escape(chart.note)}</p>')
    out.append("<h2>Resolved config</h2>")
    if not run.resolved:
        out.append('<p class="missing">Not shown: no resolved/*.json in the run directory (written by asyncrl up)</p>')
    for name, cfg in run.resolved.items():
        out.append(f"<details><summary>{escape(name)}</summary>"
                   f"<pre>{escape(json.dumps(cfg, indent=2))}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
