"""The learner with 2 ranks (FSDP2 over gloo, torchrun) trains the same batch to the same
loss and weights as with 1 rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import free_port
from tests.e2e import REPO

TWO_RANKS_MATCH_ONE = {
    "grpo": {"advantage": "grpo"},
    "gae+ref+token_budget": {"advantage": "gae", "kl_loss_coef": 0.1, "learner": {"max_tokens_per_microbatch": 24}},
}
FILTERED = {  # the off-policy filter rejects tokens (behaviour log-probs are noisy)
    "mis": {"correction": "mis"},
    "decoupled+3mini+2epochs": {"correction": "decoupled", "is_cap": 1.5,
                                "learner": {"prompts_per_step": 3, "ppo_mini_batches": 3, "ppo_epochs": 2}},
}


def _filtered_case(algo: dict, world: int) -> dict:
    """1 rank: one padded micro-batch of every sample; 2 ranks: packed micro-batches of 1 sample."""
    cut = {"micro_batch_size": 64, "packing": False} if world == 1 else {"micro_batch_size": 1, "packing": True}
    return {**algo, "groups": {"beh_noise": 1.5}, "learner": {**algo.get("learner", {}), **cut}}


Result = tuple[dict, dict]


@pytest.fixture(scope="module")
def steps(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Result]]:
    """Every case's one step with 1 rank and with 2 ranks: one torchrun launch per world size."""
    out: dict[int, dict[str, Result]] = {}
    for world in (1, 2):
        cases = {**TWO_RANKS_MATCH_ONE, **{k: _filtered_case(v, world) for k, v in FILTERED.items()}}
        root = tmp_path_factory.mktemp(f"ranks{world}")
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                "--master-port", str(free_port()), str(REPO / "tests" / "dist_step.py"), str(tiny_model_dir),
                str(root), json.dumps(cases)]
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=400,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        out[world] = {name: (json.loads((root / name / "stats.json").read_text()), torch.load(root / name / "state.pt"))
                      for name in cases}
    return out


def _same_weights(w1: dict, w2: dict) -> None:
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("case", list(TWO_RANKS_MATCH_ONE))
def test_two_ranks_match_one(steps: dict[int, dict[str, Result]], case: str) -> None:
    (s1, w1), (s2, w2) = steps[1][case], steps[2][case]
    for key in ("loss", "pg_loss", "grad_norm", "entropy", "advantage_abs_mean"):
        assert s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-6), key
    _same_weights(w1, w2)


@pytest.mark.parametrize("case", list(FILTERED))
def test_filtered_tokens_same_update_whatever_the_cut(steps: dict[int, dict[str, Result]], case: str) -> None:
    """Tokens rejected by the off-policy filter leave the loss's denominator the same way
    however the batch is cut: 1 rank, one padded micro-batch of every sample, vs 2 ranks,
    packed micro-batches of 1 sample."""
    (s1, w1), (s2, w2) = steps[1][case], steps[2][case]
    assert 0 < s1["is_masked_frac"] < 1
    for key in ("loss", "pg_loss", "grad_norm", "is_masked_frac", "clip_frac", "optimizer_steps"):
        assert s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-6), key
    _same_weights(w1, w2)


def test_sft_two_ranks_match_one_with_uneven_batches(tiny_model_dir: Path, tmp_path: Path) -> None:
    """9 examples in batches of 4 (the last batch has 1 example: rank 1 gets only padding passes)
    and a small token budget (ranks get different micro-batch counts): 2 ranks train the same
    weights as 1 rank, and nothing hangs."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import load_file

    rows = [{"prompt": f"Say {w}.", "response": w * (i % 4 + 1)} for i, w in enumerate("abcdefghi")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    weights = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
                str(free_port()), "-m", "cli.main", "sft", str(REPO / "configs" / "sft" / "tiny_sft.toml"),
                "--run-dir", str(out), "--max-steps", "3", "--set", f"model.path={tiny_model_dir}",
                "--set", f"data.train={tmp_path / 'd.parquet'}", "--set", f"data.test={tmp_path / 'd.parquet'}",
                "--set", "train.batch_size=4", "--set", "train.max_tokens_per_microbatch=40",
                "--set", "train.eval_every=0", "--set", "train.warmup_steps=0"]
        res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        weights[world] = load_file(out / "checkpoints" / "final" / "model.safetensors")
    for k in weights[1]:
        torch.testing.assert_close(weights[2][k], weights[1][k], atol=1e-5, rtol=1e-4, msg=k)
