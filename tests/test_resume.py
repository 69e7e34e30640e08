"""Checkpoint and resume: kill -9 the learner after a checkpoint, ``asyncrl up --resume``, and the
run continues exactly as an uninterrupted one (same prompts per step, same losses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SYNC_EVERY, SYNC_STEPS, SharedRun
from tests.e2e import REPO, read_metrics, run_up, start_up

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_cpu.toml"
STEPS, EVERY = SYNC_STEPS, SYNC_EVERY  # killed after the step-3 checkpoint, resumed for steps 4-6


def _steps(run_dir: Path) -> dict[int, dict]:
    recs = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert len({r["step"] for r in recs}) == len(recs), "a step was logged twice"
    return {r["step"]: r for r in recs}


def _run_and_kill_learner_after(run_dir: Path, overrides: list[str], checkpoint: str) -> str:
    """``asyncrl up`` until ``checkpoint`` is written, then kill -9 its learner; returns the output."""
    with start_up(CONFIG, run_dir, overrides, max_steps=STEPS) as up:
        for line in up.follow(timeout_s=300):
            if f"checkpoint {run_dir / 'checkpoints' / checkpoint}" in line:
                os.kill(up.pids["learner"], signal.SIGKILL)
                break
        code = up.wait(120)
    assert code == 1, up.output[-4000:]
    assert "learner was killed by signal 9" in up.output
    return up.output


def test_kill_and_resume_matches_an_uninterrupted_run(sync_run: SharedRun, sync_sets: list[str],
                                                      tmp_path: Path) -> None:
    """The uninterrupted run is tests/conftest.py::sync_run (same overrides, same 6 steps)."""
    assert sync_run.returncode == 0, sync_run.stdout[-4000:]
    run = tmp_path / "run"
    _run_and_kill_learner_after(run, sync_sets, f"step_{EVERY:06d}")
    res = run_up(CONFIG, run, sync_sets + ["run.resume=true"], max_steps=STEPS)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from" in res.stdout and f"serve the resumed weights v{EVERY}" in res.stdout

    want, got = _steps(sync_run.run_dir), _steps(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        a, b = want[step], got[step]
        assert b["prompt_ids"] == a["prompt_ids"], step  # identical data order
        assert b["policy_version"] == a["policy_version"] == step
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), step
        assert b["reward_mean"] == pytest.approx(a["reward_mean"], abs=1e-6), step
    last = f"step_{STEPS:06d}"
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["final", last]  # keep 1
    assert (run / "checkpoints" / last / "hf" / "config.json").is_file()


def test_resume_without_checkpoint_exits_2(sync_sets: list[str], tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "cli.main", "up", str(CONFIG), "--run-dir", str(tmp_path / "r"),
                          "--resume"] + [a for ov in sync_sets for a in ("--set", ov)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no complete checkpoint" in res.stderr, res.stderr[-2000:]
