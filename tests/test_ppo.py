"""PPO mini-batches and epochs, and loss normalisation independent of micro-batching.

The Trainer (FSDP2-wrapped tiny model, micro-batched, packed) is compared with a reference
PPO loop written here on the plain HF model: one sample per forward, GRPO advantages,
truncated IS, the clipped surrogate and token-mean per mini-batch written out token by token.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from asyncrl.config import ConfigError, validate_config
from learner.algo.ppo import mini_batches, old_source
from tests.test_step import _groups, _trainer

LR, CLIP_LOW, CLIP_HIGH, CAP = 1e-2, 0.2, 0.28, 2.0
# Adam divides by sqrt(v) + eps: at the default 1e-8 a gradient element that is float noise
# (~1e-9) still moves its weight by up to lr, in either direction. A larger eps, in both
# loops, keeps such elements from dominating the comparison.
ADAM_EPS = 1e-5


def test_mini_batches_take_whole_contiguous_groups() -> None:
    index = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    assert mini_batches(index, 1) == [list(range(8))]
    assert mini_batches(index, 2) == [[0, 1, 2, 3, 4], [5, 6, 7]]
    with pytest.raises(ValueError, match="learner.ppo_mini_batches=3"):
        mini_batches(index, 3)


def test_config_checks_divisibility_and_defaults() -> None:
    base = {"model": {"path": "m"}, "data": {"train": "t"}}
    with pytest.raises(ConfigError, match=r"learner.prompts_per_step=4 is not divisible by learner.ppo_mini_batches=3"):
        validate_config({**base, "learner": {"prompts_per_step": 4, "ppo_mini_batches": 3}})
    cfg = validate_config(base)
    assert (cfg.learner.ppo_mini_batches, cfg.learner.ppo_epochs, cfg.algorithm.old_logprobs) == (1, 1, "recompute")
    assert old_source(cfg.learner, cfg.algorithm) == "forward"  # defaults: no extra no-grad pass
    two = validate_config({**base, "learner": {"ppo_epochs": 2}})
    assert old_source(two.learner, two.algorithm) == "pass"


def _samples(groups: list) -> list[dict]:
    out = []
    for gid, g in enumerate(groups):
        for r in g.to_pylist():
            out.append({"group": gid, "prompt": r["prompt_token_ids"], "response": r["response_token_ids"],
                        "beh": torch.tensor(r["behaviour_logprobs"], dtype=torch.float64), "reward": r["reward"]})
    return out


def _logprobs(model: torch.nn.Module, s: dict) -> torch.Tensor:
    ids = s["prompt"] + s["response"]
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    p = len(s["prompt"])
    return torch.log_softmax(logits[p - 1:len(ids) - 1], -1).gather(1, torch.tensor(s["response"])[:, None])[:, 0]


def _reference(model_dir, groups: list, n_mini: int, epochs: int,
               behaviour_old: bool) -> tuple[dict, list[float], list[float]]:
    """PPO by hand: old log-probs before any update, ``n_mini`` contiguous group mini-batches
    repeated ``epochs`` times, one AdamW step each. Returns the weights and each step's clip
    fraction and gradient norm."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.0, eps=ADAM_EPS)
    samples = _samples(groups)
    for s in samples:  # GRPO: (r - group mean) / (unbiased group std + eps)
        rs = torch.tensor([t["reward"] for t in samples if t["group"] == s["group"]], dtype=torch.float64)
        s["adv"] = (s["reward"] - rs.mean()) / (rs.std() + 1e-6)
        with torch.no_grad():
            s["old"] = s["beh"] if behaviour_old else _logprobs(model, s)
        s["w"] = torch.exp(s["old"] - s["beh"]).clamp(max=CAP)  # tis: pi_old / mu, truncated
    n_groups = len(groups)
    clip_fracs, norms = [], []
    for _ in range(epochs):
        for m in range(n_mini):
            mb = [s for s in samples if m * n_groups // n_mini <= s["group"] < (m + 1) * n_groups // n_mini]
            n_tok = sum(len(s["response"]) for s in mb)
            total, clipped = 0.0, 0
            for s in mb:
                ratio = torch.exp(_logprobs(model, s) - s["old"])
                l1, l2 = -s["adv"] * ratio, -s["adv"] * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)
                total = total + (s["w"] * torch.maximum(l1, l2)).sum() / n_tok
                clipped += int((l2 > l1).sum())
            total.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
            opt.step()
            opt.zero_grad()
            clip_fracs.append(clipped / n_tok)
    return {k: v.detach() for k, v in model.named_parameters()}, clip_fracs, norms


@pytest.mark.parametrize("n_mini,epochs,old", [(1, 1, "recompute"), (2, 2, "recompute"), (1, 1, "behaviour")],
                         ids=["default", "2mini_2epochs", "behaviour_old"])
def test_trainer_matches_reference_ppo_loop(tiny_model_dir, n_mini: int, epochs: int, old: str) -> None:
    groups = _groups(n_groups=4)
    torch.manual_seed(0)
    trainer = _trainer(tiny_model_dir, learner={"lr": LR, "prompts_per_step": 4, "ppo_mini_batches": n_mini,
                                                "ppo_epochs": epochs, "packing": True},
                       correction="tis", is_cap=CAP, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, old_logprobs=old)
    for g in trainer.optimizer.param_groups:
        g["eps"] = ADAM_EPS
    stats = trainer.step(groups, learner_version=0)
    want, clip_fracs, norms = _reference(tiny_model_dir, groups, n_mini, epochs, behaviour_old=old == "behaviour")
    got = {k: p.detach().full_tensor() for k, p in trainer.policy.named_parameters()}
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert stats["optimizer_steps"] == n_mini * epochs
    assert stats["grad_norm"] == pytest.approx(sum(norms) / len(norms), rel=1e-4)  # Adam hides a scale error
    assert stats["clip_frac"] == pytest.approx(sum(clip_fracs) / len(clip_fracs), abs=1e-6)
    if epochs > 1 or old == "behaviour":
        assert stats["clip_frac"] > 0  # the clip binds once old != current
    else:
        assert stats["clip_frac"] == 0 and stats["ppo_kl"] == 0


FILTERING = [{"correction": "mis"}, {"correction": "decoupled", "is_cap": 1.5},
             {"correction": "seq_mis", "is_lower": 0.3, "is_upper": 3.0},
             {"correction": "mis", "mis_ratio": "mu_over_pi", "is_lower": 0.6},
             {"correction": "decoupled", "is_cap": 1.5, "decoupled_filter": "zero"}]
LAYOUTS = [{"micro_batch_size": 1, "packing": False}, {"micro_batch_size": 4, "packing": False},
           {"micro_batch_size": 4, "packing": True}, {"micro_batch_size": 64, "packing": True},
           {"micro_batch_size": 64, "packing": True, "max_tokens_per_microbatch": 20}]


@pytest.mark.parametrize("algo", FILTERING, ids=lambda a: ",".join(str(v) for v in a.values()))
def test_update_is_independent_of_micro_batching(tiny_model_dir, algo: dict) -> None:
    """Tokens rejected by the correction leave the loss; the update must not depend on how
    the batch is cut: micro-batches of 1, 4 and all, padded and packed, with a token budget."""
    groups = _groups(n_groups=3, beh_noise=1.5)
    results = []
    for layout in LAYOUTS:
        torch.manual_seed(0)
        trainer = _trainer(tiny_model_dir, learner={**layout, "lr": LR}, **algo)
        for g in trainer.optimizer.param_groups:
            g["eps"] = ADAM_EPS
        stats = trainer.step(groups, learner_version=1)
        results.append((stats, [p.detach().full_tensor().clone() for p in trainer.policy.parameters()]))
    s0, w0 = results[0]
    if algo.get("decoupled_filter") != "zero":  # zero keeps rejected tokens in the mask, with weight 0
        assert 0 < s0["is_masked_frac"] < 1, s0["is_masked_frac"]
    for s, w in results[1:]:
        assert s["loss"] == pytest.approx(s0["loss"], abs=1e-6)
        assert s["grad_norm"] == pytest.approx(s0["grad_norm"], rel=1e-5)
        for a, b in zip(w0, w):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)  # lr 1e-2: weights move ~1e-2
    assert math.isfinite(s0["loss"])


def test_resume_between_steps_is_exact(tiny_model_dir, tmp_path) -> None:
    """2 mini-batches x 2 epochs, warm-up LR: a checkpoint after learner step 1 (a batch
    boundary: weights, Adam moments, LR schedule), restored into a fresh trainer, continues
    to the same weights as the run that never stopped."""
    from learner.fsdp.checkpoint import Checkpointer

    learner = {"lr": LR, "prompts_per_step": 2, "ppo_mini_batches": 2, "ppo_epochs": 2, "warmup_steps": 3}
    batches = [_groups(n_groups=2), _groups(n_groups=2, beh_noise=0.5)]
    torch.manual_seed(0)
    straight = _trainer(tiny_model_dir, learner=learner)
    for v, groups in enumerate(batches):
        last = straight.step(groups, learner_version=v)
    ck = Checkpointer(tmp_path / "ck", keep=1)
    torch.manual_seed(0)
    first = _trainer(tiny_model_dir, learner=learner)
    first.step(batches[0], learner_version=0)
    ck.save(1, {"policy": (first.policy, first.optimizer)}, {"trainer": first.state()})
    torch.manual_seed(0)
    resumed = _trainer(tiny_model_dir, learner=learner)
    resumed.restore(ck.load(ck.latest(), {"policy": (resumed.policy, resumed.optimizer)})["trainer"])
    again = resumed.step(batches[1], learner_version=1)
    assert again["lr"] == last["lr"] == pytest.approx(LR * 2 / 3)  # the schedule counts learner steps
    assert again["loss"] == last["loss"] and again["optimizer_steps"] == 4
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a.detach().full_tensor(), b.detach().full_tensor())
