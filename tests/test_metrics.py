"""asyncrl.metrics / asyncrl.log: jsonl output, NaN -> null, console off, fake wandb (the real
trackers: test_trackers.py)."""

import io
import json
import logging
import sys
import types

import torch

from asyncrl.config import LoggingSection
from asyncrl.log import setup_logging
from asyncrl.metrics import MetricsLogger


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_lines_and_nan_to_null(tmp_path):
    m = MetricsLogger(tmp_path / "run", max_steps=3, console=False)
    m.log({"step": 1, "reward/mean": 0.5, "loss": float("nan"), "x": float("inf")})
    m.log({"step": 2, "reward/mean": torch.tensor(0.75), "nested": {"a": [1.0, float("nan")]}})
    m.log({"event": "validation", "acc": 0.25})
    # Lines are flushed before close: a crashed run keeps them.
    rows = _lines(tmp_path / "run" / "metrics.jsonl")
    assert rows[0] == {"step": 1, "reward/mean": 0.5, "loss": None, "x": None}
    assert rows[1] == {"step": 2, "reward/mean": 0.75, "nested": {"a": [1.0, None]}}
    assert rows[2] == {"event": "validation", "acc": 0.25}
    m.close()
    m.close()  # idempotent


def test_console_off_logs_plain_summary(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="asyncrl.metrics")
    with MetricsLogger(tmp_path, max_steps=10, console=True) as m:  # stdout is no TTY under pytest
        assert m._progress is None
        m.log({"step": 4, "reward/mean": 0.125, "staleness/mean": 1.0, "perf/samples_per_s": 32.0})
    msg = caplog.records[-1].getMessage()
    assert "step 4/10" in msg and "reward_mean=0.125" in msg
    assert "staleness=1" in msg and "samples/s=32" in msg


def test_wandb_is_called_lazily(tmp_path, monkeypatch):
    calls = {}

    class Run:
        def log(self, record, step=None):
            calls.setdefault("log", []).append((record, step))

        def finish(self, **kw):
            calls["finish"] = kw

    def init(**kw):
        calls["init"] = kw
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    m = MetricsLogger.from_config(LoggingSection(wandb=True, console=False), tmp_path, 2, {"lr": 1e-5})
    assert "init" in calls
    m.log({"step": 1, "loss": 0.5, "prompt_ids": [1, 2], "val": {"acc": 0.25}})
    m.log({"event": "note", "x": 2})  # no step: logged at the last one
    m.close()
    assert calls["init"] == {"project": "asyncrl", "mode": "offline", "dir": str(tmp_path),
                             "config": {"lr": 1e-5}}
    assert calls["log"] == [({"loss": 0.5, "val/acc": 0.25}, 1), ({"x": 2.0}, 1)]
    assert calls["finish"] == {"exit_code": 0}


def test_setup_logging_format(capsys):
    logger = setup_logging("learner", "DEBUG")
    logger.debug("hello %d", 3)
    err = capsys.readouterr().err
    assert "DEBUG [learner] hello 3" in err
    # Drop the handler bound to capsys's stream so later tests never write to it.
    for h in logging.root.handlers[:]:
        logging.root.removeHandler(h)
    logging.root.setLevel(logging.WARNING)


def test_rich_progress_on_a_tty(tmp_path, monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    out = FakeTTY()
    monkeypatch.setattr(sys, "stdout", out)
    m = MetricsLogger(tmp_path, max_steps=5, console=True)
    assert m._progress is not None
    m.log({"step": 2, "reward/mean": 0.5, "staleness/mean": 0.0, "perf/samples_per_s": 8.0})
    m.close()
    assert "reward_mean=0.5" in out.getvalue() and "2/5" in out.getvalue()
