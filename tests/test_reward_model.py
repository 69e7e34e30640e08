"""Reward-model scoring with a tiny randomly initialised sequence-classification model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import zmq

from asyncrl import schema
from tests.test_sockets import _cfg
from tests.test_wire import _row


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    out = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_scores_are_batch_independent(reward_model_dir: Path, tiny_model_dir: Path) -> None:
    from reward.model_scorer import ModelScorer

    scorer = ModelScorer(reward_model_dir, tiny_model_dir, batch_size=4)
    prompts = [[2, 40, 41, 3], [2, 50, 3]] * 3
    responses = ["12", "a much longer reply 123", "", "x", "7 + 5 = 12 #### 12", "?"]
    batched = scorer.score(prompts, responses)
    single = [scorer.score([p], [r])[0] for p, r in zip(prompts, responses)]
    assert all(abs(a - b) < 1e-4 for a, b in zip(batched, single))  # padding does not leak
    assert len(set(round(x, 6) for x in batched)) > 1


def test_rejects_multi_label_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, LlamaForSequenceClassification

    from reward.model_scorer import ModelScorer

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_labels = 3
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "m3")
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "m3")
    with pytest.raises(ValueError, match="num_labels=3"):
        ModelScorer(tmp_path / "m3", tiny_model_dir)


def test_mixed_reward_worker_over_sockets(reward_model_dir: Path, tiny_model_dir: Path) -> None:
    from reward.model_scorer import ModelScorer
    from reward.worker import RewardWorker

    cfg = _cfg()
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": tiny_model_dir}),
                                 "reward": cfg.reward.model_copy(update={
                                     "type": "mixed", "model_path": reward_model_dir,
                                     "function_weight": 2.0, "model_weight": 0.5})})
    worker = RewardWorker(cfg, 0)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.bind(f"tcp://{cfg.transport.trajectories}")
    src = ctx.socket(zmq.PUSH)
    src.connect(f"tcp://{cfg.transport.rewards[0]}")
    try:
        row = _row(response_text="12ab")  # toy_digits = 0.5
        src.send(schema.encode_batch(schema.make_batch([row])))
        assert sink.poll(30000)
        got = schema.decode_batch(sink.recv()).column("reward")[0].as_py()
        model_score = ModelScorer(reward_model_dir, tiny_model_dir).score([row["prompt_token_ids"]], ["12ab"])[0]
        assert abs(got - (2.0 * 0.5 + 0.5 * model_score)) < 1e-4
    finally:
        worker.running = False
        t.join(5)
        worker.close()
        ctx.destroy(linger=0)


def test_model_type_requires_path() -> None:
    from asyncrl.config import ConfigError, validate_config
    with pytest.raises(ConfigError, match="reward.model_path"):
        validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "reward": {"type": "model"}})
