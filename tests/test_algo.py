"""Golden-value tests for learner.algo, each expected value computed by hand in floats.

Equations: PPO clipped surrogate, Schulman et al. 2017 eq. 7; GRPO group-normalised
advantage, Shao et al. 2024 (DeepSeekMath) eq. 3; asymmetric clip-higher, DAPO (Yu et
al. 2025); truncated importance weights, IMPALA (Espeholt et al. 2018) / veRL rollout-IS.
"""

import math

import pytest
import torch

from learner.algo import (ADVANTAGE_ESTIMATORS, POLICY_LOSSES, entropy_from_logits,
                          grpo_advantages, policy_loss, token_logprobs)

CLIP_LOW, CLIP_HIGH, TIS_CAP = 0.2, 0.28, 2.0

# Per token: (logprob, old_logprob, behaviour_logprob, mask). Row 0 has A = +1, row 1 A = -0.5.
TOKENS = [
    [
        (-1.0 + math.log(1.5), -1.0, -1.1, 1),      # r = 1.5 > 1.28: upper clip active; w = e^0.1
        (-2.0 - 0.5, -2.0, -2.0 - math.log(3), 1),  # r = e^-0.5 (A>0: unclipped); w = 3 -> cap 2
        (5.0, -30.0, -70.0, 0),                     # masked garbage (r=e^35, IS=e^40): must not count
    ],
    [
        (-1.0 + math.log(0.7), -1.0, -0.8, 1),      # r = 0.7 < 0.8, A<0: lower clip active; w = e^-0.2
        (-0.5 + math.log(1.4), -0.5, -0.5, 1),      # r = 1.4, A<0: unclipped r*A is smaller; w = 1
        (-3.0 + math.log(1.1), -3.0, -3.0 - math.log(2.5), 1),  # r = 1.1 in range; w = 2.5 -> cap 2
    ],
]
ADV = [1.0, -0.5]


def _tensors(tokens=TOKENS, adv=ADV):
    col = lambda i: torch.tensor([[t[i] for t in row] for row in tokens], dtype=torch.float64)
    return col(0), col(1), col(2), torch.tensor(adv, dtype=torch.float64), col(3)


def _loss(lp, old, beh, adv, mask):
    return policy_loss(lp, old, beh, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, tis_cap=TIS_CAP)


def test_grpo_golden_2x3():
    rewards = [[1.0, 0.0, 0.0], [2.0, 4.0, 9.0]]
    expected = []
    for row in rewards:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / (len(row) - 1))  # unbiased, as veRL
        expected.append([(r - mean) / (std + 1e-6) for r in row])
    got = grpo_advantages(torch.tensor(rewards))
    assert got.shape == (2, 3)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert ADVANTAGE_ESTIMATORS["grpo"] is grpo_advantages


def test_grpo_constant_group_is_zero_and_no_std_scaling():
    got = grpo_advantages(torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 2.0]]), scale_by_std=False)
    assert got.tolist() == [[0.0, 0.0, 0.0], [0.0, -1.0, 1.0]]
    assert torch.equal(grpo_advantages(torch.ones(2, 4)), torch.zeros(2, 4))
    assert torch.equal(grpo_advantages(torch.tensor([[3.0], [1.0]])), torch.zeros(2, 1))


def test_policy_loss_golden():
    total, n_valid, n_clip, n_trunc = 0.0, 0, 0, 0
    is_ratios, kls, diffs = [], [], []
    for row, a in zip(TOKENS, ADV):
        for lp, old, beh, m in row:
            if not m:
                continue
            r = math.exp(lp - old)
            r_clip = min(max(r, 1 - CLIP_LOW), 1 + CLIP_HIGH)
            is_ratio = math.exp(old - beh)
            w = min(is_ratio, TIS_CAP)
            total += -w * min(r * a, r_clip * a)
            n_valid += 1
            n_clip += r_clip * a < r * a
            n_trunc += is_ratio > TIS_CAP
            is_ratios.append(is_ratio)
            kls.append((is_ratio - 1) - (old - beh))  # k3 estimator of KL(behaviour || old)
            diffs.append(abs(old - beh))
    loss, metrics = _loss(*_tensors())
    assert loss.item() == pytest.approx(total / n_valid, abs=1e-9)
    # Both clip sides are exercised: one upper (A>0), one lower (A<0).
    assert (n_valid, n_clip, n_trunc) == (5, 2, 2)
    assert metrics["clip_frac"] == pytest.approx(n_clip / n_valid)
    assert metrics["is_truncated_frac"] == pytest.approx(n_trunc / n_valid)
    assert metrics["is_ratio_mean"] == pytest.approx(sum(is_ratios) / n_valid)
    assert metrics["is_ratio_max"] == pytest.approx(3.0)  # before truncation; masked e^40 ignored
    assert metrics["approx_kl_behaviour"] == pytest.approx(sum(kls) / n_valid)
    assert metrics["logprob_abs_diff"] == pytest.approx(sum(diffs) / n_valid)
    assert all(type(v) is float for v in metrics.values())
    assert POLICY_LOSSES["ppo_tis"] is policy_loss


def test_on_policy_ratios_one_gives_minus_mean_advantage():
    lp = torch.tensor([[-1.0, -2.0, -0.3], [-0.7, -0.1, -4.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, -0.5])
    loss, metrics = _loss(lp, lp.clone(), lp.clone(), adv, mask)
    expected = -(1.0 + 1.0 - 0.5 * 3) / 5  # token-mean: each valid token carries its row's A
    assert loss.item() == pytest.approx(expected, abs=1e-7)
    assert metrics["clip_frac"] == 0.0 and metrics["is_truncated_frac"] == 0.0
    assert metrics["is_ratio_mean"] == pytest.approx(1.0)
    assert metrics["approx_kl_behaviour"] == pytest.approx(0.0, abs=1e-7)


def test_gradient_signs():
    lp, old, beh, adv, mask = _tensors()
    lp = lp.clone().requires_grad_(True)
    loss, _ = _loss(lp, old, beh, adv, mask)
    loss.backward()
    g = lp.grad
    assert g[0, 1] < 0        # A>0, unclipped: raising its logprob lowers the loss
    assert g[0, 0] == 0       # A>0 above 1+clip_high: clipped, no gradient
    assert g[1, 0] == 0       # A<0 below 1-clip_low: clipped, no gradient
    assert g[1, 1] > 0        # A<0, unclipped: raising its logprob raises the loss
    assert g[0, 2] == 0       # masked
    # Finite difference agrees: nudge the positive-advantage token's logprob up.
    bumped = lp.detach().clone()
    bumped[0, 1] += 1e-3
    assert _loss(bumped, old, beh, adv, mask)[0] < loss.detach()


def test_all_masked_is_finite_zero():
    z = torch.zeros(2, 3)
    loss, metrics = _loss(z, z, z, torch.ones(2), z)
    assert loss.item() == 0.0 and all(math.isfinite(v) for v in metrics.values())


def test_token_logprobs_matches_log_softmax_and_bf16_path():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    got = token_logprobs(logits.float(), targets)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    bf = logits.to(torch.bfloat16)
    ref_bf = torch.log_softmax(bf.double(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(bf, targets).double(), ref_bf, atol=1e-5)


def test_entropy_from_logits():
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(expected, abs=1e-6)
