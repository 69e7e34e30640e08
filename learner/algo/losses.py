"""Policy, value and entropy losses over token-level ``[B, T]`` tensors (veRL-compatible).

* :func:`agg_loss` reduces a per-token loss matrix with veRL's ``loss_agg_mode`` names.
* :data:`POLICY_LOSSES` maps a config name to a policy loss with one signature::

      fn(logprobs, old_logprobs, advantages, mask, *, is_weights=None, agg_mode=...,
         clip_low=..., clip_high=..., clip_c=...) -> (loss, metrics)

  ``logprobs`` is the differentiable recomputation, ``old_logprobs`` the pre-update one
  (the proximal policy in decoupled PPO, see :mod:`learner.algo.offpolicy`); ``advantages``
  ``[B, T]``; ``is_weights`` ``[B, T]`` detached off-policy weights multiplied into the
  per-token loss (None = 1). Losses that have no use for an argument ignore it.
* :func:`value_loss` is PPO's clipped value loss; :func:`entropy_bonus` aggregates entropy.

Padding may hold arbitrary (even infinite) values, so masked positions are replaced by 0
*before* any arithmetic: ``inf * 0`` is NaN and would poison sums and gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

PolicyLoss = Callable[..., tuple[Tensor, dict[str, float]]]

_LOG_RATIO_BOUND = 20.0  # veRL clamps log-ratios to [-20, 20] before exp


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    # clamp: an all-masked batch gives 0 rather than NaN (and a zero gradient).
    return torch.where(mask > 0, x, torch.zeros_like(x)).mul(mask).sum() / mask.sum().clamp(min=1.0)


def _zero_pad(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask > 0, x, torch.zeros_like(x))


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str, norm_len: int | None = None) -> Tensor:
    """Reduce ``loss_mat [B, T]`` over valid tokens ``mask [B, T]`` to a scalar.

    * ``token-mean``: sum over all valid tokens / their count (DAPO's token-level loss).
    * ``seq-mean-token-sum``: per-sequence token sum, mean over the B sequences.
    * ``seq-mean-token-mean``: per-sequence token mean, mean over the B sequences
      (original GRPO; GSPO). An all-masked row contributes 0 but still counts in B.
    * ``seq-mean-token-sum-norm``: per-sequence token sum / ``norm_len`` (default T),
      mean over sequences: Dr. GRPO (Liu et al. 2025)'s constant normaliser, which
      removes the length bias of per-sequence means. Same as veRL 0.9 (``loss_scale_factor``
      = ``norm_len``, default the padded response length), except that veRL leaves
      sequences with no valid token out of the mean; here they count in B with 0. (veRL
      <= 0.6 summed over sequences instead of averaging, a loss B times larger.)
    """
    mask = mask.to(loss_mat.dtype)
    x = _zero_pad(loss_mat, mask) * mask
    if mode == "token-mean":
        return x.sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-sum":
        return x.sum(-1).mean()
    if mode == "seq-mean-token-mean":
        return (x.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if mode == "seq-mean-token-sum-norm":
        norm = float(norm_len if norm_len is not None else loss_mat.shape[-1])
        return (x.sum(-1) / norm).mean()
    raise ValueError(f"unknown loss agg mode {mode!r}; known: {AGG_MODES}")


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``clamp(logprobs - sg[old], -20, 20)``, 0 at padding."""
    d = _zero_pad(logprobs, mask) - _zero_pad(old_logprobs.detach(), mask)
    return d.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)


def _ratio_metrics(ratio: Tensor, log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    valid = mask > 0
    r = ratio.detach()
    zero = r.new_zeros(())
    return {
        "ppo_kl": _masked_mean(-log_ratio.detach(), mask),  # k1 estimate of KL(old || new)
        "ratio_max": r[valid].max() if valid.any() else zero,
        "ratio_min": r[valid].min() if valid.any() else zero,
    }


def _weighted(pg: Tensor, is_weights: Tensor | None) -> Tensor:
    # Detached: the weights re-weight samples; they are not a function of the parameters.
    return pg if is_weights is None else pg * is_weights.detach().to(pg.dtype)


def ppo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
             is_weights: Tensor | None = None, agg_mode: str = "token-mean",
             clip_low: float = 0.2, clip_high: float = 0.2,
             clip_c: float | None = 3.0) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7) with asymmetric and dual clip.

    ``r = exp(lp - old)``; ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``
    (clip-higher, DAPO). Dual clip (Ye et al. 2020), on when ``clip_c`` is not None (veRL
    default 3.0): for ``A < 0``, ``l = min(l, -A clip_c)`` bounds the loss of tokens whose
    ratio has exploded. Then ``l *= is_weights`` and :func:`agg_loss`.

    Metrics: ``clip_frac`` (clipped branch strictly larger), ``clip_frac_lower`` and its
    alias ``dual_clip_frac`` (dual clip active), ``ppo_kl`` (mean ``old - lp``),
    ``ratio_max``, ``ratio_min``.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    adv = _zero_pad(advantages.to(logprobs.dtype), mask)
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(l1, l2)
    dual = torch.zeros_like(mask, dtype=torch.bool)
    if clip_c is not None:
        if clip_c <= 1.0:
            raise ValueError(f"dual-clip clip_c must be > 1, got {clip_c}")
        l3 = -adv * clip_c
        dual = (pg > l3) & (adv < 0)
        pg = torch.where(adv < 0, torch.minimum(pg, l3), pg)
    loss = agg_loss(_weighted(pg, is_weights), mask, agg_mode)
    with torch.no_grad():
        dual_frac = _masked_mean(dual.to(mask.dtype), mask)
        metrics = {
            "clip_frac": _masked_mean((l2 > l1).to(mask.dtype), mask),
            "clip_frac_lower": dual_frac,
            "dual_clip_frac": dual_frac,
            **_ratio_metrics(ratio, log_ratio, mask),
        }
    return loss, {k: float(v) for k, v in metrics.items()}


def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
              is_weights: Tensor | None = None, agg_mode: str = "seq-mean-token-mean",
              clip_low: float = 3e-4, clip_high: float = 4e-4,
              clip_c: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025, eq. 5-7): clipped surrogate on a sequence-level ratio.

    ``s_i = exp(mean_t (lp - old))`` (length-normalised sequence ratio); token form
    ``s_i,t = sg[s_i] * exp(lp_t - sg[lp_t])``: its value is ``s_i`` and its gradient
    ``s_i * grad lp_t``, so token-level advantages stay possible (veRL's GSPO-token).
    Log ratio clamped at 10 as in veRL. ``clip_c`` is ignored (no dual clip in GSPO).
    The paper aggregates with ``seq-mean-token-mean`` (the default); ``agg_mode`` is
    honoured as given.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    seq_log = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
    lp = _zero_pad(logprobs, mask)
    log_s = (lp - lp.detach() + seq_log.detach().unsqueeze(-1)).clamp(max=10.0)
    s = torch.exp(log_s)
    adv = _zero_pad(advantages.to(logprobs.dtype), mask)
    l1 = -adv * s
    l2 = -adv * s.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(l1, l2)
    loss = agg_loss(_weighted(pg, is_weights), mask, agg_mode)
    with torch.no_grad():
        metrics = {
            "clip_frac": _masked_mean((l2 > l1).to(mask.dtype), mask),
            "clip_frac_lower": torch.zeros(()),
            "dual_clip_frac": torch.zeros(()),
            **_ratio_metrics(s, log_ratio, mask),
        }
    return loss, {k: float(v) for k, v in metrics.items()}


def reinforce_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                   is_weights: Tensor | None = None, agg_mode: str = "token-mean",
                   clip_low: float = 0.2, clip_high: float = 0.2,
                   clip_c: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Unclipped policy gradient: ``l = -A * exp(lp - sg[old]) * is_weights``.

    At ``lp == old`` its gradient is ``-A * grad lp`` (REINFORCE, Williams 1992), and the
    ratio keeps it correct for later minibatches of the same batch. Clip args ignored.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    adv = _zero_pad(advantages.to(logprobs.dtype), mask)
    loss = agg_loss(_weighted(-adv * ratio, is_weights), mask, agg_mode)
    with torch.no_grad():
        metrics = {"clip_frac": torch.zeros(()), **_ratio_metrics(ratio, log_ratio, mask)}
    return loss, {k: float(v) for k, v in metrics.items()}


POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo": ppo_loss,
    "vanilla": ppo_loss,  # veRL's name for the same loss
    "gspo": gspo_loss,
    "reinforce": reinforce_loss,
}


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}") from None


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range: float, agg_mode: str = "token-mean") -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (PPO; veRL ``compute_value_loss``), all inputs ``[B, T]``.

    ``v_clip = old + clip(v - old, -c, c)``; ``0.5 * agg(max((v - R)^2, (v_clip - R)^2))``.
    Metric ``vf_clip_frac``: fraction of valid tokens where the clipped term is larger.
    """
    mask = mask.to(values.dtype)
    v = _zero_pad(values, mask)
    old = _zero_pad(old_values.detach(), mask)
    ret = _zero_pad(returns.detach(), mask)
    v_clip = old + (v - old).clamp(-clip_range, clip_range)
    l1 = (v - ret) ** 2
    l2 = (v_clip - ret) ** 2
    loss = 0.5 * agg_loss(torch.maximum(l1, l2), mask, agg_mode)
    with torch.no_grad():
        clip_frac = _masked_mean((l2 > l1).to(mask.dtype), mask)
    return loss, {"vf_clip_frac": float(clip_frac)}


def entropy_bonus(entropy: Tensor, mask: Tensor, agg_mode: str = "token-mean") -> Tensor:
    """Aggregated entropy ``[B, T] -> scalar``; the trainer *subtracts* ``coef * bonus``."""
    return agg_loss(entropy, mask, agg_mode)
