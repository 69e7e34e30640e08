"""asyncrl/timeline.py: buffered span files, busy spans from overlapping jobs, an unwritable folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from asyncrl.timeline import BusySpans, Timeline
from rollout.stats import GeneratorStats


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spans_are_buffered_then_written_on_close(tmp_path: Path) -> None:
    tl = Timeline(tmp_path, "learner", flush_s=3600)
    with tl.span("train"):
        time.sleep(0.01)
    tl.add("sync", 100.0, 100.5)
    path = tmp_path / "timeline" / "learner.jsonl"
    assert not path.exists()  # buffered: nothing written per span
    tl.close()
    train, sync = _read(path)
    assert train["kind"] == "train" and 0.005 < train["t1"] - train["t0"] < 5
    assert abs(train["t0"] - time.time()) < 60  # wall clock, so processes' files line up
    assert sync == {"kind": "sync", "t0": 100.0, "t1": 100.5}
    tl.add("wait", 101.0, 102.0)
    tl.close()  # appends
    assert [s["kind"] for s in _read(path)] == ["train", "sync", "wait"]


def test_flushes_after_flush_s(tmp_path: Path) -> None:
    tl = Timeline(tmp_path, "generator-0", flush_s=0.0)
    tl.add("generate", 1.0, 2.0)
    assert _read(tmp_path / "timeline" / "generator-0.jsonl")[0]["kind"] == "generate"


def test_span_is_recorded_when_the_body_raises(tmp_path: Path) -> None:
    tl = Timeline(tmp_path, "learner")
    with pytest.raises(RuntimeError), tl.span("sync"):
        raise RuntimeError("peer died")
    tl.close()
    assert _read(tmp_path / "timeline" / "learner.jsonl")[0]["kind"] == "sync"


def test_unwritable_folder_logs_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run dir should be")
    tl = Timeline(blocker, "learner", flush_s=0.0)
    with caplog.at_level(logging.WARNING, logger="asyncrl.timeline"):
        for i in range(5):
            tl.add("train", float(i), i + 0.5)
        tl.close()
    assert len([r for r in caplog.records if "timeline disabled" in r.getMessage()]) == 1


def test_null_timeline_records_nothing(tmp_path: Path) -> None:
    tl = Timeline(None, "learner", flush_s=0.0)
    with tl.span("train"):
        pass
    tl.close()
    assert not list(tmp_path.iterdir())


def test_busy_spans_cover_the_time_some_job_is_open(tmp_path: Path) -> None:
    tl = Timeline(tmp_path, "generator-0", flush_s=3600)
    busy = BusySpans(tl, "generate")
    busy.begin()
    busy.begin()  # a second job while the first runs: still one busy period
    busy.end()
    time.sleep(0.01)
    busy.end()
    busy.begin()  # a new period, still open at close
    busy.close()
    tl.close()
    spans = _read(tmp_path / "timeline" / "generator-0.jsonl")
    assert [s["kind"] for s in spans] == ["generate", "generate"]
    assert spans[0]["t1"] - spans[0]["t0"] >= 0.005 and spans[1]["t0"] >= spans[0]["t1"]


def test_generator_stats_write_generate_and_sync_spans(tmp_path: Path) -> None:
    stats = GeneratorStats(tmp_path / "rollout-0.jsonl", timeline=Timeline(tmp_path, "generator-0", flush_s=3600))
    stats.begin()
    stats.paused(0.25)
    stats.end(samples=8, tokens=100)
    stats.begin()  # in flight when the generator stops
    stats.close(version=3)
    kinds = [s["kind"] for s in _read(tmp_path / "timeline" / "generator-0.jsonl")]
    assert kinds == ["sync", "generate", "generate"]
    assert _read(tmp_path / "rollout-0.jsonl")[-1]["groups"] == 1
