"""Every algorithm option runs through the real Trainer on a tiny HF model (no vLLM here;
the same paths run end to end through `asyncrl up` in test_algorithms_e2e)."""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl import schema
from asyncrl.config import validate_config
from learner.fsdp.model import load_policy
from learner.step import Trainer
from tests.test_wire import _row


def _groups(n_groups: int = 2, n: int = 4, baseline: bool = False, beh_noise: float = 0.0) -> list:
    """Scored groups of random lengths and rewards; behaviour log-probs -4.6 (about the tiny
    model's), plus uniform noise in ``[-beh_noise, beh_noise]`` so that ratio filters reject some."""
    g = torch.Generator().manual_seed(0)
    noise = torch.Generator().manual_seed(1)
    out = []
    for gid in range(n_groups):
        rows = []
        for i in range(n + int(baseline)):
            r = 1 + int(torch.randint(0, 5, (1,), generator=g))
            beh = [-4.6] * r
            if beh_noise:
                beh = (-4.6 + beh_noise * (2 * torch.rand(r, generator=noise) - 1)).tolist()
            rows.append(_row(group_id=gid, sample_index=i, prompt_token_ids=[2, 10 + gid, 11, 12],
                             response_token_ids=[20 + j for j in range(r)], behaviour_logprobs=beh,
                             policy_version=0, reward=float(torch.rand(1, generator=g)),
                             is_baseline=baseline and i == n))
        out.append(schema.make_batch(rows))
    return out


def _trainer(model_dir, learner: dict | None = None, **algo) -> Trainer:
    lr = {"micro_batch_size": 3, "lr": 1e-3, "max_staleness": 2, **(learner or {})}
    cfg = validate_config({"model": {"path": str(model_dir)}, "data": {"train": "t"}, "learner": lr,
                           "algorithm": algo})
    from learner.train import Learner
    stub = Learner.__new__(Learner)  # build only the trainer, not sockets/data
    stub.cfg, (stub.model, tok) = cfg, load_policy(cfg.model.path, "float32", cfg.learner)
    stub.pad_id = tok.pad_token_id
    return stub._build_trainer()


CASES = [
    {"advantage": "grpo"}, {"advantage": "grpo", "norm_adv_by_std": False, "loss_agg_mode": "seq-mean-token-sum-norm"},
    {"advantage": "rloo", "loss_agg_mode": "seq-mean-token-sum"}, {"advantage": "reinforce_pp", "loss": "reinforce"},
    {"advantage": "reinforce_pp_baseline", "kl_in_reward": True, "kl_controller": "adaptive"},
    {"advantage": "remax"}, {"advantage": "gae", "gamma": 0.99, "lam": 0.95},
    {"loss": "gspo", "clip_low": 3e-4, "clip_high": 4e-4, "loss_agg_mode": "seq-mean-token-mean"},
    {"clip_c": 3.0, "entropy_coef": 0.01, "kl_loss_coef": 0.1, "kl_loss_type": "k3"},
    {"correction": "seq_tis"}, {"correction": "mis"}, {"correction": "seq_mis"}, {"correction": "decoupled"},
    {"dynamic_sampling": True, "overlong_buffer": 2, "stale_policy": "reweight"},
]


@pytest.mark.parametrize("algo", CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_every_option_steps(tiny_model_dir, algo: dict) -> None:
    trainer = _trainer(tiny_model_dir, **algo)
    before = [p.detach().full_tensor().clone() for p in trainer.policy.parameters()]
    stats = trainer.step(_groups(baseline=algo.get("advantage") == "remax"), learner_version=1)
    after = [p.detach().full_tensor() for p in trainer.policy.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "no parameter moved"
    for k, v in stats.items():
        if isinstance(v, float):
            assert math.isfinite(v), (k, v)
    assert stats["staleness_hist"] == {1: 8}
    if algo.get("advantage") == "gae":
        assert "value_loss" in stats and stats["critic_grad_norm"] > 0
    if algo.get("kl_in_reward"):
        assert "kl_reward" in stats


@pytest.mark.parametrize("algo", [{"advantage": "grpo"}, {"advantage": "gae", "kl_loss_coef": 0.1}],
                         ids=["grpo", "gae"])
def test_packed_and_padded_steps_agree(tiny_model_dir, algo: dict) -> None:
    """Packing and token-budget micro-batching change the layout, not the update."""
    results = []
    for learner in ({"packing": False}, {"packing": True}, {"packing": True, "max_tokens_per_microbatch": 20}):
        torch.manual_seed(0)
        trainer = _trainer(tiny_model_dir, learner=learner, **algo)
        stats = trainer.step(_groups(), learner_version=1)
        results.append((stats, [p.detach().full_tensor().clone() for p in trainer.policy.parameters()]))
    (s0, w0) = results[0]
    for s, w in results[1:]:
        assert s["loss"] == pytest.approx(s0["loss"], abs=1e-5)
        assert s["grad_norm"] == pytest.approx(s0["grad_norm"], rel=1e-4)
        for a, b in zip(w0, w):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # lr 1e-3: moves ~1e-3


def test_gradient_checkpointing_and_mixed_precision(tiny_model_dir) -> None:
    """Checkpointing recomputes activations without changing the update; FSDP2 bf16 mixed
    precision (fp32 reduce and master weights) stays within bf16 error of the fp32 step."""
    out = {}
    for name, learner in (("base", {}), ("ckpt", {"gradient_checkpointing": True}),
                          ("mp", {"mixed_precision": True})):
        torch.manual_seed(0)
        trainer = _trainer(tiny_model_dir, learner=learner, advantage="gae")
        stats = trainer.step(_groups(), learner_version=1)
        out[name] = (stats, [p.detach().full_tensor().clone() for p in trainer.policy.parameters()])
        assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())  # master weights
    base_stats, base_w = out["base"]
    assert out["ckpt"][0]["loss"] == pytest.approx(base_stats["loss"], abs=1e-6)
    for a, b in zip(base_w, out["ckpt"][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert out["mp"][0]["loss"] == pytest.approx(base_stats["loss"], abs=5e-2)
    assert out["mp"][0]["entropy"] == pytest.approx(base_stats["entropy"], rel=2e-2)


def test_attn_implementation_reaches_policy_and_critic(tiny_model_dir) -> None:
    """``learner.attn_implementation`` picks the kernel of every model the learner loads; eager and the
    default (sdpa) give the same step on packed rows (the block-diagonal mask holds for both)."""
    out = {}
    for attn in (None, "eager"):
        torch.manual_seed(0)
        trainer = _trainer(tiny_model_dir, learner={"attn_implementation": attn}, advantage="gae")
        assert trainer.policy.config._attn_implementation == (attn or "sdpa")
        assert trainer.critic is not None and trainer.critic.backbone.config._attn_implementation == (attn or "sdpa")
        out[attn] = trainer.step(_groups(), learner_version=1)
    assert out["eager"]["loss"] == pytest.approx(out[None]["loss"], abs=1e-5)
    assert out["eager"]["grad_norm"] == pytest.approx(out[None]["grad_norm"], rel=1e-4)
