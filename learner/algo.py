"""Pure learner math: advantages, the PPO-clip policy loss with truncated IS, logprobs.

Nothing here touches models, devices or I/O, so every function is unit-testable with
hand-computed golden values (tests/test_algo.py). Algorithms are looked up by config
string in :data:`ADVANTAGE_ESTIMATORS` / :data:`POLICY_LOSSES` so later ones slot in
without touching the training loop.

Three logprob tensors appear in the loss, all ``[B, T]`` over next-token targets:

* ``behaviour_logprobs``: what the (possibly stale) generator reported when sampling;
* ``old_logprobs``: the learner's own recomputation under the current weights, before
  the update (the PPO "old" policy);
* ``logprobs``: the learner's differentiable recomputation during the update.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def grpo_advantages(rewards: Tensor, eps: float = 1e-6, scale_by_std: bool = True) -> Tensor:
    """Group-normalised outcome advantages (GRPO, Shao et al. 2024, DeepSeekMath eq. 3).

    ``A_i = (r_i - mean(r)) / (std(r) + eps)`` within each group of samples of one prompt.

    The std is ``torch.std`` (unbiased, Bessel-corrected), as veRL's
    ``compute_grpo_outcome_advantage`` does, so results match veRL runs; the paper does
    not specify the estimator. With ``scale_by_std=False`` only the mean is removed
    (Dr. GRPO, Liu et al. 2025), which avoids up-weighting near-uniform groups.

    Args:
        rewards: ``[G, n]`` one row per prompt group, one column per sample.
    Returns:
        ``[G, n]`` float32 advantages. Groups with identical rewards get 0. A group of
        one sample (n == 1) has no baseline to compare with and also gets 0, where the
        unbiased std would otherwise be NaN.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [G, n], got shape {tuple(rewards.shape)}")
    r = rewards.float()
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (r.std(dim=1, keepdim=True) + eps)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {"grpo": grpo_advantages}


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    # clamp: an all-masked batch gives 0 rather than NaN (and a zero gradient).
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    behaviour_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    tis_cap: float,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clip and truncated importance sampling.

    Per token: ``r = exp(logprobs - old)``, ``w = min(exp(old - behaviour), tis_cap)``
    (detached), ``loss_t = -w * min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)``;
    aggregated as the token-mean over ``mask``.

    * Clipped surrogate: Schulman et al. 2017 (PPO), eq. 7.
    * Asymmetric "clip-higher" (``clip_high > clip_low``): DAPO, Yu et al. 2025 — lets
      low-probability tokens grow, countering entropy collapse.
    * ``w`` corrects for sampling from the generator's stale weights rather than the
      learner's current ones; truncation bounds its variance (IMPALA/V-trace, Espeholt
      et al. 2018; veRL's rollout-IS "token" mode). Detached: it re-weights samples,
      it is not a function of the parameters being optimised.

    Args:
        logprobs, old_logprobs, behaviour_logprobs: ``[B, T]`` next-token logprobs.
        advantages: ``[B]`` one per sequence, broadcast over its tokens.
        mask: ``[B, T]`` 1 for response tokens that count, 0 for prompt/padding.
    Returns:
        Scalar loss (differentiable w.r.t. ``logprobs``) and float metrics:
        ``clip_frac``, ``is_ratio_mean``, ``is_ratio_max`` (before truncation),
        ``is_truncated_frac``, ``approx_kl_behaviour`` (k3 estimate of
        KL(behaviour || old)), ``logprob_abs_diff`` (mean ``|old - behaviour|``).
    """
    mask = mask.to(logprobs.dtype)
    valid = mask > 0
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)  # [B, 1]
    # Zero the differences at masked positions before exp: padding may hold arbitrary
    # values, and inf * 0 = NaN would poison the sums.
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)
    log_is = torch.where(valid, old_logprobs.detach() - behaviour_logprobs.detach(), zero)

    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surr = ratio * adv
    surr_clipped = clipped * adv
    is_ratio = torch.exp(log_is)
    is_weight = is_ratio.clamp(max=tis_cap)
    token_loss = -is_weight * torch.minimum(surr, surr_clipped)
    loss = _masked_mean(token_loss, mask)

    with torch.no_grad():
        n_valid = valid.sum()
        metrics = {
            # The clipped branch is active where it is strictly smaller (its gradient is 0).
            "clip_frac": _masked_mean((surr_clipped < surr).to(mask.dtype), mask),
            "is_ratio_mean": _masked_mean(is_ratio, mask),
            "is_ratio_max": is_ratio[valid].max() if n_valid > 0 else zero,
            "is_truncated_frac": _masked_mean((is_ratio > tis_cap).to(mask.dtype), mask),
            # k3 estimator (Schulman 2020): unbiased, non-negative per sample.
            "approx_kl_behaviour": _masked_mean(is_ratio - 1.0 - log_is, mask),
            "logprob_abs_diff": _masked_mean(log_is.abs(), mask),
        }
    return loss, {k: float(v) for k, v in metrics.items()}


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {
    "ppo_tis": policy_loss,
}


def _chunk_size(logits: Tensor) -> int:
    # Up-cast one batch row at a time: a bf16 [B, T, V] logits tensor upcast whole
    # would add a float32 copy twice its size; float32 input needs no copy at all.
    return 1 if logits.dtype != torch.float32 else max(logits.shape[0], 1)


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p(targets)`` under ``softmax(logits)``, computed in float32.

    Uses ``logit[target] - logsumexp(logits)``, which never materialises the full
    ``[B, T, V]`` log-softmax output.

    Args:
        logits: ``[B, T, V]``. targets: ``[B, T]`` token ids.
    Returns:
        ``[B, T]`` float32 logprobs (differentiable w.r.t. ``logits``).
    """
    out = []
    size = _chunk_size(logits)
    for lg, tg in zip(logits.split(size, dim=0), targets.split(size, dim=0)):
        lg = lg.float()
        picked = lg.gather(-1, tg.long().unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0) if out else logits.new_zeros(logits.shape[:2], dtype=torch.float32)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` per position, in float32 (for metrics).

    ``H = logsumexp(l) - sum(softmax(l) * l)``. Call under ``torch.no_grad()`` when it
    is only logged, so no graph over ``[B, T, V]`` is kept.

    Args:
        logits: ``[B, T, V]``.
    Returns:
        ``[B, T]`` float32 entropies in nats.
    """
    out = []
    for lg in logits.split(_chunk_size(logits), dim=0):
        lg = lg.float()
        lse = torch.logsumexp(lg, dim=-1)
        out.append(lse - (torch.softmax(lg, dim=-1) * lg).sum(-1))
    return torch.cat(out, dim=0) if out else logits.new_zeros(logits.shape[:2], dtype=torch.float32)
