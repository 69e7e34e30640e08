"""Golden-value tests for learner.algo.losses, expected values recomputed here in plain floats.

* PPO clipped surrogate: Schulman et al. 2017 eq. 7; asymmetric clip-higher: DAPO (Yu
  et al. 2025); dual clip: Ye et al. 2020 ("Mastering Complex Control in MOBA Games").
* GSPO: Zheng et al. 2025 eq. 5-7 (sequence ratio, token form with stop-gradients).
* Aggregation modes: veRL ``agg_loss``; ``seq-mean-token-sum-norm``: Dr. GRPO (Liu et
  al. 2025), constant length normaliser.
* Value loss: clipped value objective of PPO (as in OpenAI baselines / veRL).
"""

import math

import pytest
import torch

from learner.algo.losses import AGG_MODES, POLICY_LOSSES, agg_loss, entropy_bonus, get_policy_loss, value_loss

CL, CH, C = 0.2, 0.28, 3.0
L15, L07, L14, L4, L11 = (math.log(x) for x in (1.5, 0.7, 1.4, 4.0, 1.1))

# Per token: (logprob, old_logprob, advantage, is_weight, mask). Lengths 3, 3, 1.
TOKENS = [
    [(-1.0 + L15, -1.0, 1.0, 1.0, 1),     # r = 1.5 > 1.28, A>0: upper clip
     (-2.5, -2.0, 0.8, 0.5, 1),           # r = e^-0.5, A>0: unclipped; IS weight 0.5
     (5.0, -30.0, 1.0, 1.0, 0),           # masked garbage (r = e^35)
     (-0.3, -0.3, 1.0, 1.0, 1)],          # r = 1
    [(-1.0 + L07, -1.0, -0.5, 1.0, 1),    # r = 0.7 < 0.8, A<0: lower clip
     (-0.5 + L14, -0.5, -0.5, 2.0, 1),    # r = 1.4, A<0: unclipped; IS weight 2
     (-0.2 + L4, -0.2, -0.5, 1.0, 1),     # r = 4 > c = 3, A<0: dual clip
     (0.0, 0.0, 0.0, 1.0, 0)],
    [(-3.0 + L11, -3.0, 2.0, 1.0, 1),     # r = 1.1 in range
     (0.0, 0.0, 0.0, 1.0, 0),
     (0.0, 0.0, 0.0, 1.0, 0),
     (0.0, 0.0, 0.0, 1.0, 0)],
]


def _col(i, tokens=TOKENS):
    return torch.tensor([[t[i] for t in row] for row in tokens], dtype=torch.float64)


def _agg_ref(mat, mask, mode, norm_len=None):
    """veRL agg_loss in floats (Dr. GRPO norm: sum / norm_len, mean over sequences)."""
    T = len(mat[0])
    if mode == "token-mean":
        return sum(x for r, m in zip(mat, mask) for x, k in zip(r, m) if k) / sum(map(sum, mask))
    seq = []
    for r, m in zip(mat, mask):
        s = sum(x for x, k in zip(r, m) if k)
        if mode == "seq-mean-token-mean":
            s /= max(sum(m), 1)
        elif mode == "seq-mean-token-sum-norm":
            s /= norm_len or T
        seq.append(s)
    return sum(seq) / len(seq)


def _ppo_token(lp, old, a, w, clip_c=C):
    r = math.exp(lp - old)
    loss = max(-a * r, -a * min(max(r, 1 - CL), 1 + CH))  # eq. 7, as a loss
    if clip_c is not None and a < 0:
        loss = min(loss, -a * clip_c)  # dual clip
    return w * loss


def _mask_rows(tokens=TOKENS):
    return [[t[4] for t in row] for row in tokens]


@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_loss_golden(mode):
    mat = [[1.0, 2.0, 3.0, 4.0], [5.0, -1.0, 0.5, 0.0], [2.0, 0.0, 0.0, 0.0]]
    mask = [[1, 1, 0, 1], [1, 1, 1, 0], [1, 0, 0, 0]]
    garbage = torch.tensor(mat)
    garbage[0, 2] = float("inf")  # padding may hold anything; it must not leak
    got = agg_loss(garbage, torch.tensor(mask, dtype=torch.float32), mode)
    assert got.item() == pytest.approx(_agg_ref(mat, mask, mode), abs=1e-6)


def test_agg_norm_len_and_bad_mode():
    mat, mask = [[1.0, 2.0], [3.0, 0.0]], [[1, 1], [1, 0]]
    got = agg_loss(torch.tensor(mat), torch.tensor(mask, dtype=torch.float32),
                   "seq-mean-token-sum-norm", norm_len=8)
    assert got.item() == pytest.approx(_agg_ref(mat, mask, "seq-mean-token-sum-norm", 8))
    with pytest.raises(ValueError, match="token-mean"):
        agg_loss(torch.tensor(mat), torch.tensor(mask), "bogus")


@pytest.mark.parametrize("mode", AGG_MODES)
def test_ppo_golden(mode):
    mat = [[_ppo_token(*t[:4]) for t in row] for row in TOKENS]
    mask = _mask_rows()
    valid = [t for row in TOKENS for t in row if t[4]]
    n_clip = n_dual = 0
    for lp, old, a, _, _ in valid:
        r = math.exp(lp - old)
        unclipped, clipped = -a * r, -a * min(max(r, 1 - CL), 1 + CH)
        n_clip += clipped > unclipped
        n_dual += a < 0 and max(unclipped, clipped) > -a * C
    loss, met = POLICY_LOSSES["ppo"](_col(0), _col(1), _col(2), _col(4), is_weights=_col(3),
                                     agg_mode=mode, clip_low=CL, clip_high=CH, clip_c=C)
    assert loss.item() == pytest.approx(_agg_ref(mat, mask, mode), abs=1e-9)
    assert (n_clip, n_dual) == (2, 1)  # upper and lower clip both hit, dual clip hit once
    assert met["clip_frac"] == pytest.approx(n_clip / len(valid))
    assert met["dual_clip_frac"] == met["clip_frac_lower"] == pytest.approx(n_dual / len(valid))
    assert met["ppo_kl"] == pytest.approx(sum(old - lp for lp, old, *_ in valid) / len(valid))
    assert met["ratio_max"] == pytest.approx(4.0)  # masked e^35 ignored
    assert all(type(v) is float for v in met.values())
    assert POLICY_LOSSES["vanilla"] is POLICY_LOSSES["ppo"]


def test_ppo_without_dual_clip_and_gradients():
    lp = _col(0).requires_grad_(True)
    loss, _ = get_policy_loss("ppo")(lp, _col(1), _col(2), _col(4), is_weights=None,
                                     agg_mode="token-mean", clip_low=CL, clip_high=CH, clip_c=None)
    mat = [[_ppo_token(*t[:3], 1.0, clip_c=None) for t in row] for row in TOKENS]
    assert loss.item() == pytest.approx(_agg_ref(mat, _mask_rows(), "token-mean"), abs=1e-9)
    loss.backward()
    g = lp.grad
    assert g[0, 0] == 0 and g[1, 0] == 0    # clipped tokens: no gradient
    assert g[0, 1] < 0 and g[1, 1] > 0      # unclipped: sign of -A
    assert g[1, 2] > 0                      # without dual clip the r = 4, A<0 token pushes
    assert g[0, 2] == 0 and torch.isfinite(g).all()  # masked garbage
    with pytest.raises(ValueError, match="clip_c"):
        get_policy_loss("ppo")(_col(0), _col(1), _col(2), _col(4), clip_c=0.9)


def test_gspo_golden_and_gradient():
    # s_i = exp(1/|y_i| sum_t (lp - old)) (eq. 6); token form s_i,t = sg[s_i] lp_t/sg[lp_t] (eq. 7):
    # value s_i, gradient s_i * grad lp_t. Loss per token max(-A s, -A clip(s)),
    # aggregated seq-mean-token-mean.
    lo, hi = 3e-4, 4e-4
    old = [[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0], [-0.3, -0.7, -0.9]]
    diff = [[1e-4, 2e-4, 99.0], [0.02, 0.01, 0.0], [-0.01, 0.0, 0.0]]  # [0][2] masked garbage
    mask = [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    adv = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [-2.0, -2.0, -2.0]]
    lp = [[o + d for o, d in zip(ro, rd)] for ro, rd in zip(old, diff)]
    mat, grad = [], []
    for i in range(3):
        n = sum(mask[i])
        s = math.exp(sum(d for d, m in zip(diff[i], mask[i]) if m) / n)
        row_l, row_g = [], []
        for a in adv[i]:
            unclipped, clipped = -a * s, -a * min(max(s, 1 - lo), 1 + hi)
            row_l.append(max(unclipped, clipped))
            # d/d lp_t of the seq-mean-token-mean loss: (1/B)(1/n) * (-A s) when unclipped
            row_g.append(-a * s / n / 3 if unclipped >= clipped else 0.0)
        mat.append(row_l)
        grad.append([g * m for g, m in zip(row_g, mask[i])])
    lp_t = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    loss, met = POLICY_LOSSES["gspo"](lp_t, torch.tensor(old, dtype=torch.float64),
                                      torch.tensor(adv, dtype=torch.float64),
                                      torch.tensor(mask, dtype=torch.float64), is_weights=None,
                                      agg_mode="seq-mean-token-mean", clip_low=lo, clip_high=hi,
                                      clip_c=None)
    assert loss.item() == pytest.approx(_agg_ref(mat, mask, "seq-mean-token-mean"), abs=1e-12)
    loss.backward()
    assert torch.allclose(lp_t.grad, torch.tensor(grad, dtype=torch.float64), atol=1e-12)
    # row 0: s = e^1.5e-4 inside; row 1: s = e^0.015 > 1+hi, A>0 clipped; row 2: s < 1-lo, A<0.
    assert met["clip_frac"] == pytest.approx(5 / 7)


def test_reinforce_golden():
    # loss_t = -A_t * exp(lp - old) * w_t (no clipping); gradient at lp == old is -A w grad lp.
    mat = [[-t[2] * math.exp(t[0] - t[1]) * t[3] for t in row] for row in TOKENS]
    for mode in AGG_MODES:
        loss, met = POLICY_LOSSES["reinforce"](_col(0), _col(1), _col(2), _col(4),
                                               is_weights=_col(3), agg_mode=mode,
                                               clip_low=CL, clip_high=CH, clip_c=C)
        assert loss.item() == pytest.approx(_agg_ref(mat, _mask_rows(), mode), abs=1e-9)
    old = _col(1)
    lp = old.clone().requires_grad_(True)
    loss, _ = POLICY_LOSSES["reinforce"](lp, old, _col(2), _col(4), is_weights=_col(3),
                                         agg_mode="token-mean", clip_low=CL, clip_high=CH, clip_c=C)
    loss.backward()
    assert torch.allclose(lp.grad, -_col(2) * _col(3) * _col(4) / 7)


def test_on_policy_ratios_exactly_one():
    lp, mask, adv = _col(1), _col(4), _col(2)
    for name in ("ppo", "gspo", "reinforce"):
        loss, met = POLICY_LOSSES[name](lp, lp.clone(), adv, mask, is_weights=None,
                                        agg_mode="token-mean", clip_low=CL, clip_high=CH, clip_c=C)
        assert met["ratio_max"] == 1.0 and met["ratio_min"] == 1.0, name
        assert met["clip_frac"] == 0.0 and met["ppo_kl"] == 0.0
        assert loss.item() == pytest.approx(-(adv * mask).sum().item() / 7)


def test_value_loss_golden():
    # 0.5 * max((v - R)^2, (old + clip(v - old, -c, c) - R)^2)
    c = 0.2
    v = [[1.0, 0.5, 9.0], [0.0, 2.0, 0.3]]
    old = [[0.7, 0.45, 0.0], [0.1, 1.0, 0.3]]
    ret = [[1.5, 1.0, 0.0], [0.05, 2.0, 1.3]]  # [0][0] and [1][1]: clipped term larger
    mask = [[1, 1, 0], [1, 1, 1]]
    mat, n_clip = [], 0
    for rv, ro, rr, rm in zip(v, old, ret, mask):
        row = []
        for vi, oi, ri, m in zip(rv, ro, rr, rm):
            vc = oi + min(max(vi - oi, -c), c)
            l1, l2 = (vi - ri) ** 2, (vc - ri) ** 2
            row.append(max(l1, l2))
            n_clip += m and l2 > l1
        mat.append(row)

    def f(x: list) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float64)

    for mode in ("token-mean", "seq-mean-token-mean"):
        loss, met = value_loss(f(v), f(old), f(ret), f(mask), c, agg_mode=mode)
        assert loss.item() == pytest.approx(0.5 * _agg_ref(mat, mask, mode), abs=1e-12)
    assert n_clip == 2 and met["vf_clip_frac"] == pytest.approx(2 / 5)


def test_entropy_bonus_golden():
    ent, mask = [[1.0, 2.0, 50.0], [0.5, 0.0, 0.0]], [[1, 1, 0], [1, 0, 0]]
    for mode in AGG_MODES:
        got = entropy_bonus(torch.tensor(ent), torch.tensor(mask, dtype=torch.float32), mode)
        assert got.item() == pytest.approx(_agg_ref(ent, mask, mode))


def _verl_agg_loss_seq_sum_norm(loss_mat, loss_mask, loss_scale_factor=None):
    """veRL 0.9.1 core_algos.agg_loss, "seq-mean-token-sum-norm", dp_size 1, no global info
    (verl/trainer/ppo/core_algos.py, the ``verl-0.9.1`` wheel), transcribed."""
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
    seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float().to(loss_mat.dtype)
    loss = (seq_losses * seq_mask).sum() / seq_mask.sum()
    return loss / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)


def test_seq_mean_token_sum_norm_is_verl_0_9s_mean_not_a_sum():
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0]],
                        dtype=torch.float64)
    # hand-derived: mean over the 4 rows of (row's valid sum / 6)
    by_hand = sum(float((loss[i] * mask[i]).sum()) / 6 for i in range(4)) / 4
    assert float(agg_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(by_hand, rel=1e-12)
    for norm in (None, 10):
        ours = agg_loss(loss, mask, "seq-mean-token-sum-norm", norm_len=norm)
        assert float(ours) == pytest.approx(float(_verl_agg_loss_seq_sum_norm(loss, mask, norm)), rel=1e-12)
    # the one difference: a row with no valid token counts in our B (veRL leaves it out)
    mask[2] = 0
    ours, theirs = agg_loss(loss, mask, "seq-mean-token-sum-norm"), _verl_agg_loss_seq_sum_norm(loss, mask)
    assert float(ours) == pytest.approx(float(theirs) * 3 / 4, rel=1e-12)
