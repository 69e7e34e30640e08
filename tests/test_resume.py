"""Checkpoint and resume: kill -9 the learner after a checkpoint, ``asyncrl up --resume``, and the
run continues exactly as an uninterrupted one (same prompts per step, same losses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import REPO, _kill_session, port_overrides, read_metrics, run_up

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny_cpu.toml"


@pytest.fixture(scope="module")
def common(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from cli.data.arith import write_arith

    train, test = write_arith(tmp_path_factory.mktemp("data"), n_train=200, n_test=16, seed=0)
    # synchronous (max_staleness 0) so that each step's prompts do not depend on timing
    return [f"model.path={tiny_model_dir}", f"data.train={train}", f"data.test={test}",
            "learner.max_staleness=0", "learner.checkpoint_every=4", "learner.keep_checkpoints=1"]


def _steps(run_dir: Path) -> dict[int, dict]:
    recs = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert len({r["step"] for r in recs}) == len(recs), "a step was logged twice"
    return {r["step"]: r for r in recs}


def _run_and_kill_learner_after(run_dir: Path, overrides: list[str], checkpoint: str) -> str:
    """``asyncrl up`` until ``checkpoint`` is written, then kill -9 its learner; returns the output."""
    argv = [sys.executable, "-m", "cli.main", "up", str(CONFIG), "--run-dir", str(run_dir), "--max-steps", "8"]
    for ov in overrides + port_overrides():
        argv += ["--set", ov]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, learner_pid = [], None
    deadline = time.monotonic() + 300
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "started learner (pid" in line:
                learner_pid = int(line.split("(pid ")[1].split(")")[0])
            if f"checkpoint {run_dir / 'checkpoints' / checkpoint}" in line:
                assert learner_pid is not None
                os.kill(learner_pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(lines[-50:])
        rest, _ = proc.communicate(timeout=120)
        lines.append(rest)
    finally:
        _kill_session(proc.pid)
    out = "".join(lines)
    assert proc.returncode == 1, out[-4000:]
    assert "learner was killed by signal 9" in out
    return out


def test_kill_and_resume_matches_an_uninterrupted_run(common: list[str], tmp_path: Path) -> None:
    ref = run_up(CONFIG, tmp_path / "ref", common, max_steps=8)
    assert ref.returncode == 0, ref.stdout[-4000:]
    run = tmp_path / "run"
    _run_and_kill_learner_after(run, common, "step_000004")
    res = run_up(CONFIG, run, common + ["run.resume=true"], max_steps=8)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from" in res.stdout and "serve the resumed weights v4" in res.stdout

    want, got = _steps(tmp_path / "ref"), _steps(run)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        a, b = want[step], got[step]
        assert b["prompt_ids"] == a["prompt_ids"], step  # identical data order
        assert b["policy_version"] == a["policy_version"] == step
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), step
        assert b["reward_mean"] == pytest.approx(a["reward_mean"], abs=1e-6), step
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["final", "step_000008"]  # keep 1
    assert (run / "checkpoints" / "step_000008" / "hf" / "config.json").is_file()


def test_resume_without_checkpoint_exits_2(common: list[str], tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "cli.main", "up", str(CONFIG), "--run-dir", str(tmp_path / "r"),
                          "--resume"] + [a for ov in common for a in ("--set", ov)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no complete checkpoint" in res.stderr, res.stderr[-2000:]
