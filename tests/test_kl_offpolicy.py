"""Golden-value tests for learner.kl and learner.offpolicy, references in plain floats.

* k1/k2/k3 KL estimators: Schulman 2020, "Approximating KL divergence" (k3 clamp as veRL).
* Adaptive KL controller: Ziegler et al. 2019 (arXiv 1909.08593), as veRL.
* Truncated IS: IMPALA (Espeholt et al. 2018), Yao et al. 2025 (TIS for rollout/learner
  mismatch); masked IS (token / sequence rejection), veRL rollout-IS "mask" modes.
* Decoupled PPO: AReaL (Fu et al. 2025): weight pi_prox/mu, tokens above the cap filtered.
"""

import math

import pytest
import torch

from learner.kl import AdaptiveKLController, FixedKLController, kl_penalty
from learner.offpolicy import CORRECTION_MODES, correction, staleness_weights

LP = [[-1.0, -0.2, -3.0], [-0.5, -2.0, -0.1]]
REF = [[-1.3, -0.2, -1.0], [-0.9, -1.5, -0.6]]


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("kinds,ref_fn", [
    (("k1", "kl"), lambda lp, rf: lp - rf),
    (("k2", "mse"), lambda lp, rf: 0.5 * (lp - rf) ** 2),
    (("k3", "low_var_kl"), lambda lp, rf: math.exp(rf - lp) - (rf - lp) - 1),
    (("abs",), lambda lp, rf: abs(lp - rf)),
])
def test_kl_penalty_golden(kinds, ref_fn):
    expected = [[ref_fn(a, b) for a, b in zip(ra, rb)] for ra, rb in zip(LP, REF)]
    for kind in kinds:
        got = kl_penalty(_t(LP), _t(REF), kind)
        assert torch.allclose(got, _t(expected), atol=1e-12), kind


def test_k3_clamped_like_verl_and_unknown_kind():
    # x = ref - lp. x = 30 -> clamped to 20 -> e^20 - 21 -> clamped to 10; x = -50 -> -20 ->
    # e^-20 + 19 -> 10; x = -5 is inside both bounds: e^-5 + 5 - 1.
    got = kl_penalty(_t([[-31.0, 0.0, 0.0]]), _t([[-1.0, -50.0, -5.0]]), "k3")
    assert got.tolist() == [[10.0, 10.0, pytest.approx(math.exp(-5) + 4)]]
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(_t(LP), _t(REF), "full")


def test_kl_controllers_golden():
    fixed = FixedKLController(0.05)
    fixed.update(10.0, 100)
    assert fixed.value == 0.05
    # Ziegler et al.: e = clip(kl / target - 1, -0.2, 0.2); coef *= 1 + e * n_steps / horizon
    ctl = AdaptiveKLController(init_coef=0.1, target_kl=0.05, horizon=100)
    expected = 0.1
    for kl, n in [(0.08, 10), (0.045, 20), (0.0, 5)]:
        e = min(max(kl / 0.05 - 1, -0.2), 0.2)
        expected *= 1 + e * n / 100
        ctl.update(kl, n)
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98 * 0.99)


# Off-policy: per token (old_logprob, behaviour_logprob, mask).
L3, L25, L04 = math.log(3.0), math.log(2.5), math.log(0.4)
TOKENS = [
    [(-1.0, -1.1, 1), (-2.0, -2.0 - L3, 1), (-30.0, -70.0, 0)],    # r = e^0.1, 3; masked garbage
    [(-1.0, -0.8, 1), (-0.5, -0.5, 1), (-3.0, -3.0 - L25, 1)],     # r = e^-0.2, 1, 2.5
    [(-1.0, -1.0 - L04, 1), (5.0, float("-inf"), 0), (0.0, 0.0, 0)],  # r = 0.4; -inf padding
]
CAP, LOWER, UPPER = 2.0, 0.5, 2.6


def _col(i):
    return torch.tensor([[t[i] for t in row] for row in TOKENS], dtype=torch.float64)


def _reference(mode):
    """(weights, keep, metrics) from the mode definitions, token by token."""
    weights, keep, clipped, stats, k3 = [], [], [], [], []
    for row in TOKENS:
        logs = [o - b for o, b, m in row if m]
        seq_r = math.exp(sum(logs))
        if mode.startswith("seq_") and logs:
            stats.append(seq_r)
        wrow, krow = [], []
        for o, b, m in row:
            if not m:
                wrow.append(0.0), krow.append(0.0)
                continue
            r = math.exp(o - b)
            k3.append(r - 1 - (o - b))  # k3 of KL(behaviour || old), sampled from behaviour
            if not mode.startswith("seq_"):
                stats.append(r)
            w, k = 1.0, 1.0
            if mode == "tis":
                w = min(r, CAP)
                clipped.append(r > CAP)
            elif mode == "seq_tis":
                w = min(seq_r, CAP)
                clipped.append(seq_r > CAP)
            elif mode == "mis":
                k = float(LOWER <= r <= UPPER)
            elif mode == "seq_mis":
                k = float(LOWER <= seq_r <= UPPER)
            elif mode == "decoupled":
                k = float(r <= CAP)  # AReaL behav_imp_weight_cap: filter, not truncate
                w = r
            wrow.append(w * k), krow.append(k)
        weights.append(wrow), keep.append(krow)
    n = len(k3)
    n_masked = sum(1 for row, kr in zip(TOKENS, keep) for t, k in zip(row, kr) if t[2] and not k)
    metrics = {"is_ratio_mean": sum(stats) / len(stats), "is_ratio_max": max(stats),
               "is_clipped_frac": sum(clipped) / n, "is_masked_frac": n_masked / n,
               "kl_behaviour_k3": sum(k3) / n}
    return weights, keep, metrics


@pytest.mark.parametrize("mode", CORRECTION_MODES)
def test_correction_golden(mode):
    exp_w, exp_k, exp_m = _reference(mode)
    w, keep, met = correction(_col(0), _col(1), _col(2), mode=mode, cap=CAP, lower=LOWER,
                              upper=UPPER)
    assert torch.allclose(w, _t(exp_w), atol=1e-12), (w, exp_w)
    assert torch.equal(keep, _t(exp_k))
    assert met.keys() == exp_m.keys()
    for k, v in exp_m.items():
        assert met[k] == pytest.approx(v, abs=1e-12), k
    assert all(type(v) is float for v in met.values())


def test_correction_modes_do_what_they_say():
    # Spot checks of the golden reference itself, so a shared mistake cannot hide.
    _, _, m = _reference("tis")
    assert m["is_clipped_frac"] == pytest.approx(2 / 6)               # r = 3 and 2.5
    _, keep, _ = _reference("mis")
    assert keep == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]                  # 3 > 2.6, 0.4 < 0.5
    _, keep, _ = _reference("seq_mis")
    assert keep == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]                  # seq ratios 3.3, 2.05, 0.4
    w, keep, _ = _reference("decoupled")
    assert keep == [[1, 0, 0], [1, 1, 0], [1, 0, 0]] and w[2][0] == pytest.approx(0.4)


def test_on_policy_weights_exactly_one():
    old, mask = _col(0), _col(2)
    for mode in CORRECTION_MODES:
        w, keep, met = correction(old, old.clone(), mask, mode=mode)
        assert torch.equal(w, mask) and torch.equal(keep, mask), mode
        assert met["is_ratio_max"] == 1.0 and met["kl_behaviour_k3"] == 0.0
        assert met["is_clipped_frac"] == 0.0 and met["is_masked_frac"] == 0.0


def test_correction_rejects_unknown_mode():
    with pytest.raises(ValueError, match="seq_tis"):
        correction(_col(0), _col(1), _col(2), mode="vtrace")


def test_staleness_weights_golden():
    staleness, max_s = torch.tensor([0, 2, 3, 5]), 2
    w, keep = staleness_weights(staleness, max_s, "drop")
    assert w.tolist() == [1.0] * 4 and keep.tolist() == [1.0, 1.0, 0.0, 0.0]
    w, keep = staleness_weights(staleness, max_s, "reweight")
    expected = [1.0 if s <= max_s else 1.0 / (1 + s - max_s) for s in (0, 2, 3, 5)]
    assert w.tolist() == pytest.approx(expected) and keep.tolist() == [1.0] * 4
    with pytest.raises(ValueError):
        staleness_weights(staleness, max_s, "ignore")
