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
from tests.e2e import REPO


def test_failing_child_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = validate_config({"model": {"path": "m"}, "data": {"train": "t"},
                           "run": {"dir": str(tmp_path), "max_restarts": 0}})  # no restarts left
    children = [
        launcher.Child("learner",
                       [sys.executable, "-c", "import time; print('training', flush=True); time.sleep(60)"]),
        launcher.Child("rollout-0",
                       [sys.executable, "-c", "import sys, time; time.sleep(0.5); print('boom'); sys.exit(3)"]),
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
    resolved = sorted(p.name for p in (tmp_path / "resolved").iterdir())
    assert resolved == ["learner.json", "reward-0.json"]  # one per process started, before starting them


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


def test_resolved_configs_hold_the_sections_each_role_reads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """learner / rollout-<i> / reward-<j>: the sections that role reads, defaults filled in, overrides (old
    key names included) applied at their new home; the algorithm shows only the keys in effect."""
    from asyncrl.config import load_config
    from asyncrl.resolved import ROLE_SECTIONS, write_resolved

    cfg = load_config(REPO / "configs" / "tiny_cpu_gae.toml",
                      [f"run.dir={tmp_path}", "rollout.n=6", "weight_sync.timeout_s=77", "reward.num_workers=2",
                       'transport.rewards=["127.0.0.1:5560", "127.0.0.1:5561"]', "rollout.num_generators=2"])
    names = ["reward-0", "reward-1", "learner", "rollout-0", "rollout-1"]
    folder = write_resolved(cfg, cfg.run.dir, names)
    got = {n: json.loads((folder / f"{n}.json").read_text()) for n in names}
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.json" for n in names)  # no temp files left
    for name, sections in got.items():
        assert tuple(sections) == ROLE_SECTIONS[name.split("-")[0]]
    learner, rollout, reward = got["learner"], got["rollout-1"], got["reward-1"]
    assert learner["sampling"] == rollout["sampling"] == {"n": 6, "max_new_tokens": 16, "temperature": 1.0,
                                                          "top_p": 1.0}
    assert learner["weight_sync"]["timeout_s"] == rollout["weight_sync"]["timeout_s"] == 77.0
    assert learner["rollout"] == {"num_generators": 2, "tensor_parallel_size": 1, "dtype": "float32"}
    assert learner["algorithm"]["critic_lr"] == 1e-3 and learner["algorithm"]["lam"] == 0.95  # from the TOML
    assert learner["algorithm"]["clip_low"] == 0.2 and "norm_adv_by_std" not in learner["algorithm"]
    assert learner["learner"]["lr"] == 3e-3 and learner["run"]["dir"] == str(tmp_path)
    assert "learner" not in rollout and "algorithm" not in rollout and rollout["rollout"]["max_inflight_prompts"] == 8
    assert "sampling" not in reward and reward["reward"]["function"] == "toy_digits"
    assert got["reward-0"] == reward  # the index is a command-line argument, not config


def test_live_view_shows_what_matters() -> None:
    from asyncrl.live import worth_showing

    ours = "2026-12-03 13:29:56,518 {} [{}] {}"
    assert worth_showing("learner", ours.format("INFO", "learner", "saved final checkpoint to runs/x/final"))
    assert not worth_showing("learner", ours.format("INFO", "learner", "step 3/30 reward_mean=0.1"))  # the panel's
    assert not worth_showing("rollout-0", ours.format("INFO", "rollout-0", "weights v3 applied in 0.05s"))
    assert worth_showing("rollout-0", ours.format("WARNING", "rollout-0", "learner silent for 60s"))
    assert worth_showing("reward-0", ours.format("ERROR", "reward-0", "reward function raised"))
    vllm = "(Worker pid=22960) WARNING 12-03 08:27:52 [layerwise.py:266] RotaryEmbedding: Failed to load weights"
    assert not worth_showing("rollout-0", vllm)
    assert not worth_showing("learner", "Loading weights: 100%|██████████| 20/20")
    assert worth_showing("rollout-0", "Traceback (most recent call last):")
    assert worth_showing("learner", "asyncrl learner: data.train: dataset file not found: x")


def test_live_panel_shows_the_step_figures(tmp_path: Path) -> None:
    """The panel's rows carry the newest step's reward, MFU figures and pipeline efficiency."""
    import io

    from rich.console import Console

    from asyncrl.live import LiveView

    rec = {"step": 3, "reward_mean": 0.25, "samples_per_s": 1.5, "learner_mfu": 0.412, "gen_mfu": 0.031,
           "pipeline_efficiency": 0.27, "time_s": 30.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
    view = LiveView(tmp_path, 10, lambda: [("learner", "running", 0)])
    try:
        view.metrics.poll()
        out = io.StringIO()
        Console(file=out, width=160).print(view._render())
    finally:
        view.close()
    text = out.getvalue()
    assert "3/10" in text and "41.2%" in text and "3.1%" in text and "27.0%" in text and "generator MFU" in text


def test_metrics_tail_reads_only_whole_lines(tmp_path: Path) -> None:
    from asyncrl.live import MetricsTail

    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    tail.poll()  # no file yet
    path.write_text(json.dumps({"step": 0, "val_accuracy": 0.25}) + "\n" + '{"step": 1, "reward_me')
    tail.poll()
    assert tail.val == {"val_accuracy": 0.25, "step": 0} and tail.step == {}
    with path.open("a") as f:
        f.write('an": 0.5}\n')
    tail.poll()
    assert tail.step == {"step": 1, "reward_mean": 0.5}


def test_live_view_validation_text() -> None:
    from asyncrl.live import _val_text

    assert _val_text({}) == "-"
    assert _val_text({"val_accuracy": 0.5, "val/sampled/accuracy": 0.25, "val/sampled/mean@4": 0.1, "step": 10}) == \
        "acc 0.50 sampled 0.25 @ step 10"
