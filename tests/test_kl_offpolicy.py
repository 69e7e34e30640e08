"""Golden-value tests for learner.algo.kl and learner.algo.offpolicy, references in plain floats.

* k1/k2/k3 KL estimators: Schulman 2020, "Approximating KL divergence" (k3 clamp as veRL).
* Adaptive KL controller: Ziegler et al. 2019 (arXiv 1909.08593), as veRL.
* Truncated IS: IMPALA (Espeholt et al. 2018), Yao et al. 2025 (TIS for rollout/learner
  mismatch); masked IS (token / sequence rejection), veRL rollout-IS "mask" modes.
* Decoupled PPO: AReaL (Fu et al. 2025): weight pi_prox/mu, tokens above the cap filtered.
* veRL parity: reference implementations transcribed in this file from veRL 0.9.1 (the
  ``verl-0.9.1`` wheel on PyPI; the git snapshot read alongside, volcengine/verl b178a3cd,
  is 0.8.0.dev and has no IcePop): ``verl/trainer/ppo/rollout_corr_helper.py``
  (``compute_rollout_rejection_mask`` token_k1 / seq_sum_k1, ``compute_rollout_correction_weights``
  with a ``lower_upper`` threshold = IcePop), ``verl/trainer/ppo/core_algos.py``
  (``kl_penalty`` with the ``+`` straight-through suffix), ``verl/trainer/ppo/ray_trainer.py``
  (``apply_kl_penalty``'s current_kl); AReaL ``areal/utils/functional.py``
  ``ppo_actor_loss_fn`` at inclusionAI/AReaL 072480e2 (same denominator in areal 1.0.4).
"""

import math

import pytest
import torch

from learner.algo.kl import KL_BASE_KINDS, AdaptiveKLController, FixedKLController, kl_penalty, reward_kl_mean
from learner.algo.losses import ppo_loss
from learner.algo.offpolicy import CORRECTION_MODES, correction, staleness_weights

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


def _reference(mode, mis_ratio="pi_over_mu", decoupled_filter="drop"):
    """(weights, keep, metrics) from the mode definitions, token by token."""
    weights, keep, clipped, stats, k3, n_rejected = [], [], [], [], [], [0]
    for row in TOKENS:
        logs = [o - b for o, b, m in row if m]
        seq_r = math.exp(sum(logs))
        if mode.startswith("seq_") and logs:
            stats.append(seq_r)
        wrow, krow = [], []
        # mis bounds: on pi/mu (asyncrl) or on mu/pi (veRL rollout_rs k1): lower <= 1/r <= upper
        seq_in = LOWER <= (seq_r if mis_ratio == "pi_over_mu" else 1 / seq_r) <= UPPER
        for o, b, m in row:
            if not m:
                wrow.append(0.0), krow.append(0.0)
                continue
            r = math.exp(o - b)
            k3.append(r - 1 - (o - b))  # k3 of KL(behaviour || old), sampled from behaviour
            if not mode.startswith("seq_"):
                stats.append(r)
            w, k, rejected = 1.0, 1.0, False
            if mode == "tis":
                w = min(r, CAP)
                clipped.append(r > CAP)
            elif mode == "seq_tis":
                w = min(seq_r, CAP)
                clipped.append(seq_r > CAP)
            elif mode == "mis":
                k = float(LOWER <= (r if mis_ratio == "pi_over_mu" else 1 / r) <= UPPER)
            elif mode == "seq_mis":
                k = float(seq_in)
            elif mode == "icepop":  # weight r inside [lower, upper] (of pi/mu), else 0; never dropped
                w, rejected = (r, False) if LOWER <= r <= UPPER else (0.0, True)
            elif mode == "seq_icepop":
                w, rejected = (seq_r, False) if LOWER <= seq_r <= UPPER else (0.0, True)
            elif mode == "decoupled":
                # AReaL behav_imp_weight_cap: filter, not truncate; drop from the mask or weight 0
                w, rejected = (r, False) if r <= CAP else (0.0, True)
                k = float(not rejected or decoupled_filter == "zero")
            rejected = rejected or not k
            n_rejected[0] += rejected
            wrow.append(w * k), krow.append(k)
        weights.append(wrow), keep.append(krow)
    n = len(k3)
    n_masked = n_rejected[0]
    metrics = {"is_ratio_mean": sum(stats) / len(stats), "is_ratio_max": max(stats),
               "is_clipped_frac": sum(clipped) / n, "is_masked_frac": n_masked / n,
               "kl_behaviour_k3": sum(k3) / n}
    return weights, keep, metrics


OPTIONS = [(m, "pi_over_mu", "drop") for m in CORRECTION_MODES] + [
    ("mis", "mu_over_pi", "drop"), ("seq_mis", "mu_over_pi", "drop"), ("decoupled", "pi_over_mu", "zero")]


@pytest.mark.parametrize("mode,mis_ratio,decoupled_filter", OPTIONS)
def test_correction_golden(mode, mis_ratio, decoupled_filter):
    exp_w, exp_k, exp_m = _reference(mode, mis_ratio, decoupled_filter)
    w, keep, met = correction(_col(0), _col(1), _col(2), mode=mode, cap=CAP, lower=LOWER,
                              upper=UPPER, mis_ratio=mis_ratio, decoupled_filter=decoupled_filter)
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
    # Bounds on mu/pi = 1/r keep r in [1/2.6, 2]: 3 and 2.5 go, 0.4 stays; sequences 3.3, 2.05 go.
    _, keep, _ = _reference("mis", "mu_over_pi")
    assert keep == [[1, 0, 0], [1, 1, 0], [1, 0, 0]]
    _, keep, _ = _reference("seq_mis", "mu_over_pi")
    assert keep == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    w, keep, m = _reference("icepop")  # weights r inside [0.5, 2.6]; nothing leaves the mask
    assert keep == [[1, 1, 0], [1, 1, 1], [1, 0, 0]] and m["is_masked_frac"] == pytest.approx(2 / 6)
    assert w[1] == pytest.approx([math.exp(-0.2), 1.0, 2.5]) and w[0][1] == 0 and w[2][0] == 0
    w, keep, _ = _reference("seq_icepop")
    assert w[1] == pytest.approx([math.exp(-0.2) * 2.5] * 3) and w[0] == [0.0] * 3 and w[2] == [0.0] * 3
    w, keep, _ = _reference("decoupled", decoupled_filter="zero")
    assert keep == [[1, 1, 0], [1, 1, 1], [1, 0, 0]] and w[0][1] == 0 and w[1][2] == 0


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


# --- veRL 0.9.1 / AReaL references, transcribed (names as in their source) -------------------

def _verl_masked_sum(values, mask, axis=None):
    return (values * mask).sum(axis) if axis is not None else (values * mask).sum()


def _verl_rejection_mask(log_ratio, response_mask, rollout_rs, lower, upper):
    """veRL 0.9.1 rollout_corr_helper.compute_rollout_rejection_mask, k1 options, "lower_upper"."""
    log_ratio_safe = torch.clamp(log_ratio, min=-20.0, max=20.0)
    token_k1 = -log_ratio_safe
    lower_log, upper_log = math.log(lower), math.log(upper)
    if rollout_rs == "token_k1":
        token_keep_bool = (token_k1 >= lower_log) & (token_k1 <= upper_log)
    else:  # seq_sum_k1
        seq_stat = _verl_masked_sum(token_k1, response_mask, axis=-1)
        seq_keep = (seq_stat >= lower_log) & (seq_stat <= upper_log)
        token_keep_bool = seq_keep.unsqueeze(-1).expand_as(response_mask.bool())
    return response_mask * token_keep_bool.to(log_ratio.dtype)


def _verl_icepop_weights(log_ratio, response_mask, rollout_is, lower, upper):
    """veRL 0.9.1 rollout_corr_helper.compute_rollout_correction_weights, threshold "lower_upper"."""
    if rollout_is == "token":
        raw = torch.exp(torch.clamp(log_ratio, min=-20.0, max=20.0))
    else:  # sequence
        log_ratio_sum = _verl_masked_sum(log_ratio, response_mask, axis=-1).unsqueeze(-1)
        raw = torch.exp(torch.clamp(log_ratio_sum, min=-20.0, max=20.0)).expand_as(log_ratio)
    raw = raw * response_mask
    kept = (raw >= lower) & (raw <= upper)
    return torch.where(kept, raw, torch.zeros_like(raw))


def _areal_ppo_actor_loss(logprobs, proximal_logprobs, old_logprobs, advantages, eps_clip, loss_mask,
                          eps_clip_higher, behav_imp_weight_cap):
    """AReaL ppo_actor_loss_fn (areal/utils/functional.py @ 072480e2), c_clip None."""
    loss_mask_count = loss_mask.count_nonzero() or 1
    ratio = torch.where(loss_mask, torch.exp(logprobs - proximal_logprobs), 0)
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_clip, 1.0 + eps_clip_higher)
    pg_loss = torch.max(-advantages * ratio, -advantages * clipped_ratio)
    behav_imp_weight = (proximal_logprobs - old_logprobs).exp()
    behav_mask = (behav_imp_weight <= behav_imp_weight_cap).logical_and(loss_mask)
    behav_imp_weight = torch.where(behav_mask, behav_imp_weight, 0.0)
    pg_loss = pg_loss * behav_imp_weight
    return torch.where(loss_mask, pg_loss, 0).sum() / loss_mask_count


def _random_batch(seed=0, B=6, T=9, spread=0.8):
    g = torch.Generator().manual_seed(seed)
    beh = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = beh + torch.randn(B, T, generator=g, dtype=torch.float64) * spread
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)
    mask[0, 2] = 0.0  # a gap inside a response (tool output)
    return old, beh, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lower,upper", [(0.6, 3.0), (0.25, 1.5)])
def test_mis_mu_over_pi_matches_verl_rollout_rs(seed, lower, upper):
    old, beh, mask = _random_batch(seed, spread=0.4 if upper < 2 else 0.8)
    for mode, option in (("mis", "token_k1"), ("seq_mis", "seq_sum_k1")):
        w, keep, _ = correction(old, beh, mask, mode=mode, lower=lower, upper=upper, mis_ratio="mu_over_pi")
        expected = _verl_rejection_mask(old - beh, mask, option, lower, upper)
        assert torch.equal(keep, expected), mode
        assert torch.equal(w, expected), mode  # rejection only: weight 1 on kept tokens
        assert 0 < keep.sum() < mask.sum(), "the data must exercise both sides"


def test_mis_conventions_differ_only_for_asymmetric_bounds():
    old, beh, mask = _random_batch(3)
    for mode in ("mis", "seq_mis"):
        same = [correction(old, beh, mask, mode=mode, lower=0.5, upper=2.0, mis_ratio=r)[1] for r in
                ("pi_over_mu", "mu_over_pi")]
        assert torch.equal(same[0], same[1]), mode
    a, b = (correction(old, beh, mask, mode="mis", lower=0.6, upper=3.0, mis_ratio=r)[1]
            for r in ("pi_over_mu", "mu_over_pi"))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_icepop_matches_verl_rollout_is_lower_upper(seed):
    old, beh, mask = _random_batch(seed, spread=0.6)
    for mode, level, (lo, hi) in (("icepop", "token", (0.5, 1.5)), ("seq_icepop", "sequence", (0.3, 3.0))):
        w, keep, met = correction(old, beh, mask, mode=mode, lower=lo, upper=hi)
        expected = _verl_icepop_weights(old - beh, mask, level, lo, hi)
        assert torch.allclose(w, expected, rtol=1e-12, atol=0), mode
        assert torch.equal(keep, mask), mode  # veRL: "zero OOB IS weights while preserving response_mask"
        zeroed = ((expected == 0) & (mask > 0)).sum() / mask.sum()
        assert met["is_masked_frac"] == pytest.approx(float(zeroed)), mode
    assert ((w == 0) & (mask > 0)).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_decoupled_zero_matches_areal_loss_and_drop_renormalises(seed):
    old, beh, mask = _random_batch(seed, spread=0.7)
    g = torch.Generator().manual_seed(seed + 10)
    lp = old + torch.randn(old.shape, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(old.shape, generator=g, dtype=torch.float64)
    cap = 1.5
    expected = _areal_ppo_actor_loss(lp, old, beh, adv, 0.2, mask.bool(), 0.28, cap)
    w, keep, _ = correction(old, beh, mask, mode="decoupled", cap=cap, decoupled_filter="zero")
    got, _ = ppo_loss(lp, old, adv, keep, is_weights=w, agg_mode="token-mean", clip_low=0.2,
                      clip_high=0.28, clip_c=None)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    w, keep_drop, _ = correction(old, beh, mask, mode="decoupled", cap=cap, decoupled_filter="drop")
    dropped, _ = ppo_loss(lp, old, adv, keep_drop, is_weights=w, agg_mode="token-mean", clip_low=0.2,
                          clip_high=0.28, clip_c=None)
    assert keep_drop.sum() < mask.sum()  # some tokens were filtered
    # same numerator, the denominator counts only the kept tokens
    assert float(dropped) == pytest.approx(float(expected) * float(mask.sum() / keep_drop.sum()), rel=1e-12)


def test_correction_rejects_unknown_options():
    for kw in ({"mis_ratio": "ratio"}, {"decoupled_filter": "clip"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            correction(_col(0), _col(1), _col(2), mode="mis", **kw)
    with pytest.raises(ValueError, match="lower <= upper"):
        correction(_col(0), _col(1), _col(2), mode="mis", lower=3.0, upper=2.0)


# --- KL '+' estimators and the controller's batch KL -------------------------------------------

def _verl_kl_penalty(logprob, ref_logprob, kl_penalty):
    """veRL 0.9.1 core_algos.kl_penalty (+ kl_penalty_forward)."""
    def forward(kind):
        if kind in ("kl", "k1"):
            return logprob - ref_logprob
        if kind == "abs":
            return (logprob - ref_logprob).abs()
        if kind in ("mse", "k2"):
            return 0.5 * (logprob - ref_logprob).square()
        kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
        return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    base = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    forward_score = forward(base)
    if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
        return forward_score
    backward_score = 0.5 * (logprob - ref_logprob).square()
    return backward_score - backward_score.detach() + forward_score.detach()


def _value_and_grad(kind, lp_rows=LP):
    lp = _t(lp_rows).requires_grad_(True)
    kl = kl_penalty(lp, _t(REF), kind)
    kl.sum().backward()
    return kl.detach(), lp.grad


@pytest.mark.parametrize("base", KL_BASE_KINDS)
def test_kl_plus_value_of_base_gradient_of_k2(base):
    value, grad = _value_and_grad(base + "+")
    assert torch.equal(value, kl_penalty(_t(LP), _t(REF), base))
    # d/dlp of k2 = (lp - ref)^2 / 2 is lp - ref, token by token (hand-derived)
    expected = [[a - b for a, b in zip(ra, rb)] for ra, rb in zip(LP, REF)]
    assert torch.allclose(grad, _t(expected), atol=1e-12), base


def test_kl_base_gradients_hand_derived():
    # k1 = lp - ref: 1.  k3 = e^x - x - 1, x = ref - lp: dk3/dlp = 1 - e^(ref - lp).
    _, g1 = _value_and_grad("k1")
    assert torch.equal(g1, torch.ones_like(g1))
    _, g3 = _value_and_grad("k3")
    expected = [[1 - math.exp(b - a) for a, b in zip(ra, rb)] for ra, rb in zip(LP, REF)]
    assert torch.allclose(g3, _t(expected), atol=1e-12)


@pytest.mark.parametrize("kind", [k for b in KL_BASE_KINDS for k in (b, b + "+")])
def test_kl_penalty_matches_verl(kind):
    g = torch.Generator().manual_seed(7)
    lp0 = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 4
    ref = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 4
    ours, theirs = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    a, b = kl_penalty(ours, ref, kind), _verl_kl_penalty(theirs, ref, kind)
    (a * ref).sum().backward()  # a non-uniform upstream gradient
    (b * ref).sum().backward()
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(ours.grad, theirs.grad, atol=1e-12)


def test_reward_kl_mean_token_and_sequence():
    kl = _t([[1.0, 2.0, 99.0], [4.0, float("inf"), 5.0]])
    mask = _t([[1, 1, 0], [1, 0, 0]])
    assert reward_kl_mean(kl, mask, "token") == pytest.approx((1 + 2 + 4) / 3)
    assert reward_kl_mean(kl, mask, "sequence") == pytest.approx(((1 + 2) / 2 + 4) / 2)
    # veRL apply_kl_penalty: masked_mean(kld, mask, axis=-1) (sum / (count + 1e-8)), then mean over rows
    g = torch.Generator().manual_seed(3)
    kl = torch.rand(5, 7, generator=g, dtype=torch.float64)
    _, _, mask = _random_batch(4, B=5, T=7)
    kld = kl * mask
    verl = float(((kld * mask).sum(-1) / (mask.sum(-1) + 1e-8)).mean())
    assert reward_kl_mean(kl, mask, "sequence") == pytest.approx(verl, rel=1e-7)
    with pytest.raises(ValueError, match="sequence"):
        reward_kl_mean(kl, mask, "batch")
