"""Golden-value tests for learner.algo.advantages and learner.algo.dapo.

Every expected value is recomputed here with plain Python floats and loops, from the
paper formula, independently of the implementation:

* GRPO: Shao et al. 2024 (DeepSeekMath) eq. 3; Dr. GRPO (no std): Liu et al. 2025.
* RLOO: Ahmadian et al. 2024 ("Back to Basics"), leave-one-out baseline.
* REINFORCE++ and its group-baseline variant: Hu 2025 (arXiv 2501.03262).
* ReMax: Li et al. 2023 (greedy-response baseline).
* GAE: Schulman et al. 2016 eq. 16 (with TD residual eq. 10 / delta_t).
* DAPO soft overlong punishment: Yu et al. 2025 eq. 13; dynamic sampling filter.
"""

import math

import pytest
import torch

from learner.algo.advantages import ADVANTAGE_ESTIMATORS, get_estimator, needs_baseline, needs_values
from learner.algo.dapo import groups_with_signal, overlong_penalty

# 4 samples x 3 tokens. Outcome reward on the last valid token plus small per-token
# terms (as an in-reward KL penalty would add). Samples 0-2 share a prompt, 3 is alone.
REWARDS = [[-0.1, 0.0, 1.0], [0.0, 0.5, 0.0], [0.2, -0.1, 0.0], [2.0, 0.0, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]
INDEX = [3, 3, 3, 9]
VALUES = [[0.3, 0.5, 0.8], [0.1, 0.4, 7.0], [0.0, 0.2, 0.1], [1.5, 9.0, 9.0]]  # pads: garbage
BASELINES = [0.5, 1.0, 0.0, 2.5]
EPS = 1e-6


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _run(name, **kw):
    kw.setdefault("index", torch.tensor(INDEX))
    return get_estimator(name)(_t(REWARDS), _t(MASK), **kw)


def _scores():
    return [sum(r * m for r, m in zip(rr, mm)) for rr, mm in zip(REWARDS, MASK)]


def _groups():
    g = {}
    for i, k in enumerate(INDEX):
        g.setdefault(k, []).append(i)
    return g


def _broadcast(per_sample):
    return [[per_sample[i] * m for m in MASK[i]] for i in range(len(MASK))]


def _whiten(rows):
    """veRL masked_whiten in floats: (x - mean) / sqrt(unbiased var + 1e-8) over valid tokens."""
    xs = [x for row, mm in zip(rows, MASK) for x, m in zip(row, mm) if m]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return [[(x - mean) / math.sqrt(var + 1e-8) * m for x, m in zip(row, mm)]
            for row, mm in zip(rows, MASK)]


def _close(got, expected, atol=1e-9):
    assert got.shape == (len(expected), len(expected[0]))
    assert torch.allclose(got, _t(expected), atol=atol), (got, expected)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_golden(norm_by_std):
    # A_i = (r_i - mean(r_group)) / (std(r_group) + eps)   (GRPO eq. 3; unbiased std as veRL)
    # norm_by_std=False: A_i = r_i - mean (Dr. GRPO). Singleton group: no baseline -> 0.
    s = _scores()
    adv = [0.0] * len(s)
    for members in _groups().values():
        if len(members) < 2:
            continue
        rs = [s[i] for i in members]
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1))
        for i in members:
            adv[i] = (s[i] - mean) / (std + EPS) if norm_by_std else s[i] - mean
    a, ret = _run("grpo", norm_by_std=norm_by_std)
    _close(a, _broadcast(adv))
    _close(ret, _broadcast(adv))
    assert a[3].abs().sum() == 0  # singleton


def test_rloo_golden():
    # A_i = r_i - 1/(n-1) * sum_{j != i} r_j   (Ahmadian et al. 2024); singleton -> 0.
    s = _scores()
    adv = [0.0] * len(s)
    for members in _groups().values():
        n = len(members)
        for i in members:
            if n > 1:
                adv[i] = s[i] - sum(s[j] for j in members if j != i) / (n - 1)
    a, ret = _run("rloo")
    _close(a, _broadcast(adv))
    _close(ret, _broadcast(adv))


def test_reinforce_pp_golden():
    # G_t = r_t + gamma * G_{t+1} over the valid tokens; A = whiten(G) over the batch (Hu 2025).
    gamma = 0.9
    returns = []
    for rr, mm in zip(REWARDS, MASK):
        row, g = [0.0] * len(rr), 0.0
        for t in reversed(range(len(rr))):
            if mm[t]:
                g = rr[t] + gamma * g
                row[t] = g
        returns.append(row)
    a, ret = _run("reinforce_pp", gamma=gamma)
    _close(ret, returns)
    _close(a, _whiten(returns))
    assert ADVANTAGE_ESTIMATORS["reinforce_plus_plus"] is get_estimator("reinforce_pp")


def test_reinforce_pp_baseline_golden():
    # A = whiten(r_i - mean(r_group)) broadcast over tokens (Hu 2025 / veRL rf++-baseline).
    s = _scores()
    centred = [0.0] * len(s)
    for members in _groups().values():
        mean = sum(s[i] for i in members) / len(members)
        for i in members:
            centred[i] = s[i] - mean
    expected = _whiten(_broadcast(centred))
    a, ret = _run("reinforce_pp_baseline")
    _close(a, expected)
    _close(ret, expected)
    alias = ADVANTAGE_ESTIMATORS["reinforce_plus_plus_baseline"]
    assert alias is get_estimator("reinforce_pp_baseline")


def test_remax_golden():
    # A_t = sum_{t' >= t} r_t' - b, b = reward of the greedy response (Li et al. 2023).
    returns = [[sum(r * m for r, m in zip(rr[t:], mm[t:])) * mm[t] for t in range(len(rr))]
               for rr, mm in zip(REWARDS, MASK)]
    adv = [[(g - b) * m for g, m in zip(row, mm)] for row, b, mm in zip(returns, BASELINES, MASK)]
    a, ret = _run("remax", baselines=_t(BASELINES))
    _close(a, adv)
    _close(ret, returns)
    with pytest.raises(ValueError, match="baselines"):
        _run("remax")


def test_gae_golden():
    # delta_t = r_t + gamma V_{t+1} - V_t;  A_t = sum_l (gamma lam)^l delta_{t+l}  (eq. 16),
    # V past the last valid token is 0; returns = A + V; advantages whitened.
    gamma, lam = 0.9, 0.8
    raw, returns = [], []
    for rr, vv, mm in zip(REWARDS, VALUES, MASK):
        n = sum(mm)  # trailing padding only
        deltas = [rr[t] + gamma * (vv[t + 1] if t + 1 < n else 0.0) - vv[t] for t in range(n)]
        row = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        raw.append(row + [0.0] * (len(rr) - n))
        returns.append([row[t] + vv[t] for t in range(n)] + [0.0] * (len(rr) - n))
    a, ret = _run("gae", values=_t(VALUES), gamma=gamma, lam=lam)
    _close(ret, returns)
    _close(a, _whiten(raw))
    with pytest.raises(ValueError, match="values"):
        _run("gae")


def test_registry_and_needs():
    assert needs_values("gae") and not needs_values("grpo")
    assert needs_baseline("remax") and not needs_baseline("rloo")
    with pytest.raises(ValueError, match="grpo"):  # lists the known names
        get_estimator("nope")
    for name in ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax", "gae"):
        assert name in ADVANTAGE_ESTIMATORS


def test_string_uids_match_tensor_index():
    # veRL passes string uids; the grouping must not depend on the id type.
    a_tensor, _ = _run("grpo")
    a_str, _ = _run("grpo", index=["p1", "p1", "p1", "p2"])
    assert torch.equal(a_tensor, a_str)


def test_constant_group_is_zero():
    r, m = torch.zeros(3, 2), torch.ones(3, 2)
    r[:, 1] = 0.7
    for name in ("grpo", "rloo"):
        a, _ = get_estimator(name)(r, m, index=torch.zeros(3, dtype=torch.long))
        assert torch.equal(a, torch.zeros(3, 2))


def test_overlong_penalty_golden():
    # DAPO eq. 13: 0 if L <= Lmax - Lc; ((Lmax - Lc) - L) / Lc if Lmax - Lc < L <= Lmax; -1 beyond.
    max_len, buf, factor = 20, 4, 0.5
    lens = [10, 16, 17, 19, 20, 21]
    expected = []
    for L in lens:
        if L <= max_len - buf:
            expected.append(0.0)
        elif L <= max_len:
            expected.append((max_len - buf - L) / buf * factor)
        else:
            expected.append(-factor)
    got = overlong_penalty(torch.tensor(lens), max_len, buf, factor)
    assert got.tolist() == pytest.approx(expected)


def test_groups_with_signal():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5 + 1e-3]])
    assert groups_with_signal(rewards).tolist() == [False, True, True]
    assert groups_with_signal(torch.tensor([[2.0], [3.0]])).tolist() == [False, False]


def _verl_reinforce_pp_returns(token_level_rewards, response_mask, gamma):
    """veRL 0.9.1 core_algos.compute_reinforce_plus_plus_outcome_advantage's return loop
    (verl/trainer/ppo/core_algos.py, the ``verl-0.9.1`` wheel), transcribed."""
    returns = torch.zeros_like(token_level_rewards)
    running_return = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        new_running_return = token_level_rewards[:, t] + gamma * running_return
        returns[:, t] = new_running_return * response_mask[:, t]
        running_return = new_running_return * response_mask[:, t] + running_return * (1 - response_mask[:, t])
    return returns


def test_reinforce_pp_carries_return_across_mask_gaps():
    # A multi-turn rollout: turn 1 (tokens 0-1), tool output (2-3, mask 0, with stray rewards
    # that must not count), turn 2 (4-5) ending with the outcome 1.0, then padding.
    # Hand-derived, gamma = 0.5: G5 = 1, G4 = 0.5, the gap carries 0.5 unchanged (no reward,
    # no discount), G1 = 0.1 + 0.5 * 0.5 = 0.35, G0 = 0 + 0.5 * 0.35 = 0.175.
    rewards = _t([[0.0, 0.1, 7.0, 7.0, 0.0, 1.0, 3.0], [0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    mask = _t([[1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]])
    expected = [[0.175, 0.35, 0.0, 0.0, 0.5, 1.0, 0.0], [0.5, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]]
    adv, ret = get_estimator("reinforce_pp")(rewards, mask, index=None, gamma=0.5)
    assert torch.allclose(ret, _t(expected), atol=1e-12), ret
    assert torch.allclose(ret, _verl_reinforce_pp_returns(rewards, mask, 0.5), atol=1e-12)
    assert float((adv * (1 - mask)).abs().max()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_pp_matches_verl_on_random_gapped_masks(seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(5, 11, generator=g, dtype=torch.float64)
    mask = (torch.rand(5, 11, generator=g) < 0.7).to(torch.float64)
    mask[:, -2:] = 0.0  # right padding too
    adv, ret = get_estimator("reinforce_pp")(rewards, mask, index=None, gamma=0.9)
    expected = _verl_reinforce_pp_returns(rewards, mask, 0.9)
    assert torch.allclose(ret, expected, atol=1e-12)
    # advantages: veRL masked_whiten (mean, unbiased var, rsqrt(var + 1e-8)) over valid tokens, then * mask
    n = mask.sum()
    mean = (expected * mask).sum() / n
    var = (((expected - mean) ** 2) * mask).sum() / n * n / (n - 1)
    assert torch.allclose(adv, (expected - mean) * torch.rsqrt(var + 1e-8) * mask, atol=1e-10)
