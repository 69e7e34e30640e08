"""``asyncrl rm-train``: a tiny model learns synthetic preferences, and its export scores in the
reward worker's ModelScorer the way it scored in training."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.e2e import REPO, read_metrics, run_cli

CONFIG = REPO / "configs" / "rm" / "tiny_rm.toml"
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "tree", "box"]


def _pairs(n: int, seed: int) -> list[dict]:
    """Learnable preferences: the chosen reply ends with a marker, the rejected one does not."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        out.append({"prompt": f"Describe item {i}.", "chosen": words + " :)", "rejected": words + " :("})
    return out


def rm_train(tmp: Path, *sets: str, max_steps: int = 32) -> subprocess.CompletedProcess:
    return run_cli("rm-train", CONFIG, tmp / "run", sets, max_steps)


@pytest.fixture(scope="module")
def rm_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("rm")
    pq.write_table(pa.Table.from_pylist(_pairs(256, 0)), tmp / "train.parquet")
    pq.write_table(pa.Table.from_pylist(_pairs(64, 1)), tmp / "test.parquet")
    res = rm_train(tmp, f"model.path={tiny_model_dir}", f"data.train={tmp / 'train.parquet'}",
                   f"data.test={tmp / 'test.parquet'}", "train.eval_every=16")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp / "run"


def test_test_accuracy_rises_well_above_chance(rm_run: Path) -> None:
    val = [r for r in read_metrics(rm_run) if "val_accuracy" in r]
    assert val[0]["step"] == 0 and val[-1]["step"] == 32
    assert val[-1]["val_accuracy"] >= 0.9, [v["val_accuracy"] for v in val]
    assert val[-1]["val_loss"] < 0.5 * val[0]["val_loss"]


def test_export_scores_in_the_reward_worker(rm_run: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from reward.model_scorer import ModelScorer

    scorer = ModelScorer(rm_run / "checkpoints" / "final", tiny_model_dir, batch_size=4)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = _pairs(16, 2)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                       tokenize=True) for p in pairs]
    prompts = [list(p) if isinstance(p, list) else list(p["input_ids"]) for p in prompts]
    chosen = scorer.score(prompts, [p["chosen"] for p in pairs])
    rejected = scorer.score(prompts, [p["rejected"] for p in pairs])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 15


def test_packed_and_padded_scores_agree(tiny_model_dir: Path, tmp_path: Path) -> None:
    from asyncrl.train_config import RMConfig
    from learner.supervised.rm_train import RMTrainer

    pq.write_table(pa.Table.from_pylist(_pairs(8, 3)), tmp_path / "p.parquet")
    scores = []
    for packed in (True, False):
        torch.manual_seed(0)
        cfg = RMConfig.model_validate({"model": {"path": str(tiny_model_dir)}, "run": {"dir": str(tmp_path / "r")},
                                       "data": {"train": str(tmp_path / "p.parquet")},
                                       "train": {"packing": packed}, "logging": {"console": False}})
        trainer = RMTrainer(cfg)
        with torch.no_grad():
            scores.append(trainer._scores(trainer.train))
        trainer.close()
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=1e-4)


def test_missing_column_exits_2(tiny_model_dir: Path, tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "chosen": "b"}]), tmp_path / "bad.parquet")
    res = rm_train(tmp_path, f"model.path={tiny_model_dir}", f"data.train={tmp_path / 'bad.parquet'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "missing required column 'rejected'" in res.stderr and "Traceback" not in res.stderr
