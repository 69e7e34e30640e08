"""asyncrl report (cli/report/): the self-contained HTML page and its PNGs, partial runs, the overlap
figure, exit 2 without metrics; and on a real 20-step run, that generation overlapped training."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from cli.main import app
from cli.report import ReportError, build_report
from cli.report.data import learner_seconds, load_run
from cli.report.overlap import generator_busy, intersect, merge, overlap, subtract
from tests.conftest import SharedRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_800_000_000.0  # wall clock of the synthetic runs' first span


class Page(HTMLParser):
    """Every tag's attributes, the h2 titles and the text of the page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self.titles: list[str] = []
        self.text: list[str] = []
        self._in_h2 = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs.append((tag, dict(attrs)))
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = False if tag == "h2" else self._in_h2

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_h2:
            self.titles.append(data)


def _step(step: int, **extra: Any) -> dict[str, Any]:
    return {"step": step, "policy_version": step, "reward_mean": 0.1 + 0.02 * step, "samples": 32, "tokens": 500,
            "samples_per_s": 3.0, "tokens_per_s": 50.0, "time_s": 2.0 * step, "staleness_mean": 0.5,
            "staleness_max": 1, "weight_sync_s": 0.1, "messages_dropped": 3, **extra}


def write_run(run_dir: Path, steps: int = 12, full: bool = True) -> Path:
    """A run dir as `asyncrl up` leaves it; ``full=False``: step records with the basic keys only."""
    run_dir.mkdir(parents=True)
    recs = [{"step": 0, "time_s": 0.0, "val_accuracy": 0.1, "val_reward_mean": 0.2}]
    for s in range(1, steps + 1):
        extra: dict[str, Any] = {}
        if full:
            extra = {"kl_behaviour_k3": 0.01, "entropy": 1.5 - 0.05 * s, "staleness_hist": {"0": 16, "1": 16}}
        if full and s % 5 == 0:
            extra.update({"val_accuracy": 0.1 * s / 5, "val/gsm8k/accuracy": 0.05 * s, "val/math/accuracy": 0.02 * s})
        recs.append(_step(s, **extra))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 13, "rew')
    if not full:
        return run_dir
    tl = run_dir / "timeline"
    tl.mkdir()
    # the learner trains [2k, 2k+1] and syncs [2k+1, 2k+1.2]; the generator generates from 0 to 2*steps,
    # paused [2k+1, 2k+1.2]: busy during all of training except where train and pause meet -> 100%
    learner = [("train", 2 * k, 2 * k + 1) for k in range(steps)] + [("sync", 2 * k + 1, 2 * k + 1.2)
                                                                     for k in range(steps)]
    gen = [("generate", 0, 2 * steps)] + [("sync", 2 * k + 1, 2 * k + 1.2) for k in range(steps)]
    for name, spans in (("learner", learner), ("generator-0", gen)):
        (tl / f"{name}.jsonl").write_text("".join(json.dumps({"kind": k, "t0": T0 + a, "t1": T0 + b}) + "\n"
                                                  for k, a, b in spans))
    (run_dir / "supervisor.jsonl").write_text(json.dumps({"event": "restart", "process": "rollout-0"}) + "\n")
    (run_dir / "resolved").mkdir()
    (run_dir / "resolved" / "learner.json").write_text(json.dumps({"learner": {"lr": 3e-3}}))
    return run_dir


def check_page(page: Path) -> Page:
    """The page parses, every image is an embedded PNG, and nothing is fetched from elsewhere."""
    parsed = Page(page.read_text())
    imgs = [a for tag, a in parsed.attrs if tag == "img"]
    assert imgs
    for a in imgs:
        src = a["src"] or ""
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_SIGNATURE)
        assert imread(io.BytesIO(png)).shape[0] > 100  # decodes to a real image
    for tag, a in parsed.attrs:
        for key in ("src", "href"):
            assert not a.get(key) or (a[key] or "").startswith(("data:", "#")), (tag, a)
        assert tag not in ("script", "link", "iframe")
    return parsed


def test_full_run_page_is_self_contained_with_every_figure(tmp_path: Path) -> None:
    page = build_report(write_run(tmp_path / "run"))
    assert page == tmp_path / "run" / "report" / "report.html"
    parsed = check_page(page)
    titles = " | ".join(parsed.titles)
    for title in ("Reward and validation", "Validation sets", "KL and entropy", "Staleness", "Throughput",
                  "Weight-sync pauses", "Timeline", "Resolved config"):
        assert title in titles
    assert len([1 for tag, _ in parsed.attrs if tag == "img"]) == 7
    text = " ".join(parsed.text)
    assert "Not drawn" not in text
    assert "1 (rollout-0)" in text  # restarts from supervisor.jsonl
    assert "training overlapped by generation" in text and "100%" in text
    assert "0.5 final, 0.5 best" in text  # val/gsm8k/accuracy: the last record with it (step 10)
    for name in ("reward", "validation_sets", "kl_entropy", "staleness", "throughput", "weight_sync", "timeline"):
        assert (page.parent / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)


def test_partial_run_omits_figures_with_a_note(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", full=False)
    (run_dir / "report").mkdir()
    (run_dir / "report" / "timeline.png").write_bytes(PNG_SIGNATURE)  # from an earlier report
    page = build_report(run_dir, tmp_path / "out")
    parsed = check_page(page)
    text = " ".join(parsed.text)
    assert "Not drawn: no KL or entropy keys" in text
    assert "Not drawn: no timeline/learner.jsonl" in text
    assert "no resolved/*.json" in text
    assert "per-step mean and max only" in text  # staleness without staleness_hist
    assert not (tmp_path / "out" / "timeline.png").exists() and (tmp_path / "out" / "reward.png").exists()
    build_report(run_dir)
    assert not (run_dir / "report" / "timeline.png").exists()  # a stale figure is not left behind


def test_validation_only_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "val_accuracy": 0.25}) + "\n")
    text = " ".join(check_page(build_report(run_dir)).text)
    assert "0 (validation only)" in text and "Not drawn: no samples_per_s" in text


@pytest.mark.parametrize("content", [None, "", '{"step": 1, "rew\n'])
def test_missing_or_empty_metrics_exit_2_naming_the_file(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ReportError, match="metrics.jsonl"):
        load_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert str(tmp_path / "metrics.jsonl") in result.output


def test_cli_prints_the_page(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", full=False)
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "r" / "report.html")


def test_learner_seconds_add_up_across_a_resume() -> None:
    steps = [{"step": 1, "step_s": 5.0, "time_s": 5.0}, {"step": 2, "step_s": 4.0, "time_s": 9.0},
             {"step": 3, "step_s": 6.0, "time_s": 6.0}]  # resumed after step 2: time_s starts again
    assert learner_seconds(steps) == 15.0
    assert learner_seconds([{"step": 1, "time_s": 7.0}]) == 7.0  # no step_s: the last time_s
    assert learner_seconds([]) is None


def test_interval_arithmetic() -> None:
    assert merge([(3, 4), (0, 1), (0.5, 2)]) == [(0, 2), (3, 4)]
    assert intersect([(0, 10)], [(2, 3), (5, 12)]) == [(2, 3), (5, 10)]
    assert subtract([(0, 10)], [(2, 3), (9, 12)]) == [(0, 2), (3, 9)]
    assert subtract([(0, 1)], []) == [(0, 1)]


def _spans(learner: list, *gens: list) -> dict:
    out = {"learner": [(k, float(a), float(b)) for k, a, b in learner]}
    for i, g in enumerate(gens):
        out[f"generator-{i}"] = [(k, float(a), float(b)) for k, a, b in g]
    return out


def test_overlap_fraction() -> None:
    # train [0, 10]; generator 0 generates [5, 20] but is paused [6, 7]: busy 1 + 3 s of training
    o = overlap(_spans([("train", 0, 10)], [("generate", 5, 20), ("sync", 6, 7)]))
    assert o is not None and o.train_overlap == pytest.approx(0.4)
    assert o.busy_s == pytest.approx(14) and o.generation_hidden == pytest.approx(4 / 14)
    # generation during validation does not count against hiding
    v = overlap(_spans([("train", 0, 10), ("validate", 10, 20)], [("generate", 0, 20)]))
    assert v is not None and v.busy_s == pytest.approx(10) and v.generation_hidden == pytest.approx(1.0)
    # a synchronous loop: generate, then train
    sync = overlap(_spans([("train", 10, 20), ("train", 30, 40)], [("generate", 0, 10), ("generate", 20, 30)]))
    assert sync is not None and sync.train_overlap == 0.0 and sync.generation_hidden == 0.0
    # two generators: either one busy counts once
    two = overlap(_spans([("train", 0, 10)], [("generate", 0, 5)], [("generate", 3, 8)]))
    assert two is not None and two.train_overlap == pytest.approx(0.8)
    assert two.busy_fraction == {"generator-0": pytest.approx(0.5), "generator-1": pytest.approx(0.5)}
    assert overlap(_spans([("wait", 0, 1)], [("generate", 0, 1)])) is None


def test_breakdown_adds_up_per_step() -> None:
    """Learner rows from the step records (means after the warm-up steps), a generator's rows from its
    spans over the same window, validations left out: they add up to the learner's step."""
    from cli.report.breakdown import breakdown, markdown
    from cli.report.data import RunData

    # 4 steps of 10 s: wait [10k, 10k+2], train [10k+2, 10k+9], sync [10k+9, 10k+10]; a validation
    # [40, 60] at the end. The generator generates [10k, 10k+4] (2 s of it while the learner trains),
    # pauses for the sync and generates all through the validation.
    learner, gen = [], []
    for k in range(4):
        learner += [("wait", 10 * k, 10 * k + 2), ("train", 10 * k + 2, 10 * k + 9), ("sync", 10 * k + 9, 10 * k + 10)]
        gen += [("generate", 10 * k, 10 * k + 4), ("sync", 10 * k + 9, 10 * k + 10)]
    learner.append(("validate", 40, 60))
    gen.append(("generate", 40, 60))
    spans = _spans(learner, gen)
    spans["reward-0"] = [("score", 10 * k + 4.0, 10 * k + 4.5) for k in range(4)]
    steps = [_step(k + 1, step_s=10.0, wait_s=2.0, train_s=7.0, weight_sync_s=1.0, time_phase_a_s=0.0,
                   time_forward_s=2.0, time_backward_s=4.0, time_optimizer_s=0.5, transport_s_total=0.01 * (k + 1))
             for k in range(4)]
    rows = breakdown(RunData(Path("r"), steps, [], spans=spans), skip=2)
    got = {(r.process, r.part.strip()): r.seconds for r in rows}
    assert got["learner", "step (wall)"] == 10.0 and got["learner", "backward"] == 4.0
    assert got["learner", "rest of train (batches, advantages, rank exchanges)"] == pytest.approx(0.5)
    learner_parts = [r.seconds for r in rows if r.process == "learner" and r.share is not None][1:]
    assert sum(learner_parts) == pytest.approx(10.0)
    g = {part.strip(): v for (proc, part), v in got.items() if proc == "generator-0"}
    assert g["generating (requests in flight)"] == pytest.approx(4.0)
    assert g["of which while the learner trained"] == pytest.approx(2.0)
    assert g["paused for a weight sync"] == pytest.approx(1.0) and g["idle"] == pytest.approx(5.0)
    assert got["reward-0", "scoring"] == pytest.approx(0.5)
    assert "| generator-0 | idle | 5 |" in markdown(rows)
    assert breakdown(RunData(Path("r"), steps[:2], [], spans=spans), skip=2) == []


def test_report_on_a_real_run_shows_generation_overlapping_training(tiny_run: SharedRun) -> None:
    """The asynchrony claim on a real 20-step `asyncrl up`: some generator was busy during a good part of
    the learner's training time (a synchronous loop measures 0)."""
    assert tiny_run.returncode == 0
    out = subprocess.run([sys.executable, "-m", "cli.main", "report", str(tiny_run.run_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = Path(out.stdout.strip().splitlines()[-1])
    parsed = check_page(page)
    assert "Not drawn" not in " ".join(parsed.text).replace("Not drawn: no val/", "")
    run = load_run(tiny_run.run_dir)
    assert {"learner", "generator-0"} <= set(run.spans)
    kinds = {name: {k for k, _, _ in spans} for name, spans in run.spans.items()}
    assert {"train", "sync", "wait"} <= kinds["learner"] and {"generate", "sync"} <= kinds["generator-0"]
    assert kinds["reward-0"] == {"score"}
    assert "Where a step's time goes" in " ".join(parsed.text)
    trains = [s for s in run.spans["learner"] if s[0] == "train"]
    assert len(trains) == 20  # one per step
    busy = merge([iv for ivs in generator_busy(run.spans).values() for iv in ivs])
    overlapped = [t for t in trains if intersect([t[1:]], busy)]
    # measured 17-18 of 20 steps, 22-61% of training time (the tiny generator is fast: it fills the
    # staleness window soon after each sync, then waits for the next)
    assert len(overlapped) >= 10, f"only {len(overlapped)} of 20 train spans overlap generation"
    o = overlap(run.spans)
    assert o is not None and o.train_overlap > 0.05, o
