"""The launcher stops every process when one fails and names it (the success path runs in test_e2e)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from asyncrl import launcher
from asyncrl.config import validate_config


def test_failing_child_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = validate_config({"model": {"path": "m"}, "data": {"train": "t"},
                           "run": {"dir": str(tmp_path), "max_restarts": 0}})  # no restarts left
    children = [
        launcher.Child("learner", [sys.executable, "-c", "import time; print('training', flush=True); time.sleep(60)"]),
        launcher.Child("rollout-0", [sys.executable, "-c", "import sys, time; time.sleep(0.5); print('boom'); sys.exit(3)"]),
    ]
    monkeypatch.setattr(launcher, "plan_children", lambda *a: children)
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = launcher.run_up(cfg, Path("x.toml"), [])
    assert code == 1
    assert time.monotonic() - t0 < 30
    assert "rollout-0 exited with code 3" in caplog.text and "boom" in caplog.text
    assert children[0].proc.poll() is not None  # the learner was stopped too
    assert "training" in (tmp_path / "logs" / "learner.log").read_text()


def test_learner_success_ends_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "run": {"dir": str(tmp_path)}})
    children = [launcher.Child("learner", [sys.executable, "-c", "pass"]),
                launcher.Child("reward-0", [sys.executable, "-c", "import time; time.sleep(60)"])]
    monkeypatch.setattr(launcher, "plan_children", lambda *a: children)
    assert launcher.run_up(cfg, Path("x.toml"), []) == 0
    assert children[1].proc.poll() is not None


def test_dead_reward_worker_is_restarted_with_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate_config({"model": {"path": "m"}, "data": {"train": "t"},
                           "run": {"dir": str(tmp_path), "restart_backoff_s": 0.2, "max_restarts": 2}})
    marker = tmp_path / "started"
    reward = ("import os, sys, time, pathlib; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) if p.exists() "
              "else 0; p.write_text('x' * (n + 1)); print('reward start', n + 1, flush=True); "
              "os.kill(os.getpid(), 9) if n < 2 else time.sleep(60)")
    children = [launcher.Child("learner", [sys.executable, "-c", "import time; time.sleep(4)"]),
                launcher.Child("reward-0", [sys.executable, "-c", reward, str(marker)])]
    monkeypatch.setattr(launcher, "plan_children", lambda *a: children)
    assert launcher.run_up(cfg, Path("x.toml"), []) == 0
    assert marker.read_text() == "xxx"  # started, killed twice, restarted twice
    events = [json.loads(line) for line in (tmp_path / "supervisor.jsonl").read_text().splitlines()]
    assert [(e["process"], e["count"]) for e in events] == [("reward-0", 1), ("reward-0", 2)]
    assert "killed by signal 9" in events[0]["why"]


def test_learner_death_names_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    cfg = validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "run": {"dir": str(tmp_path)}})
    children = [launcher.Child("learner", [sys.executable, "-c", "import sys; sys.exit(5)"]),
                launcher.Child("reward-0", [sys.executable, "-c", "import time; time.sleep(60)"])]
    monkeypatch.setattr(launcher, "plan_children", lambda *a: children)
    with caplog.at_level(logging.ERROR):
        assert launcher.run_up(cfg, Path("x.toml"), []) == 1
    assert "learner exited with code 5" in caplog.text and "asyncrl up x.toml --resume" in caplog.text
