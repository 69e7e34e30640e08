"""Token-level advantage estimators, looked up by (veRL-compatible) config name.

Every estimator has one signature so the trainer can call any of them the same way::

    fn(token_rewards, mask, *, index, values=None, baselines=None,
       gamma=1.0, lam=1.0, norm_by_std=True, eps=1e-6) -> (advantages, returns)

* ``token_rewards``: ``[B, T]`` rewards over response positions. The outcome reward sits
  on the last valid token; per-token terms (e.g. an in-reward KL penalty) may sit
  anywhere. Outcome estimators use the score ``token_rewards.sum(-1)``.
* ``mask``: ``[B, T]`` float, 1 on valid response tokens.
* ``index``: ``[B]`` group id per sample (samples of one prompt share it). A tensor, or
  any sequence of hashables (veRL passes string uids), see :func:`_group_ids`.
* ``values``: ``[B, T]`` critic values (``gae`` only). ``baselines``: ``[B]`` rewards of
  the greedy responses (``remax`` only).
* Returns ``advantages`` and ``returns``, both ``[B, T]`` and 0 at masked positions.

Estimators run under ``torch.no_grad()``: advantages are targets, not functions of the
parameters. Batch whitening follows veRL's ``masked_whiten`` exactly (unbiased variance,
``1e-8`` inside the square root) so runs are comparable with veRL; ``eps`` is only
GRPO's ``std + eps``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Estimator = Callable[..., tuple[Tensor, Tensor]]

_WHITEN_EPS = 1e-8  # veRL masked_whiten: (x - mean) * rsqrt(var + 1e-8)


def _group_ids(index: Tensor | Sequence[Any], device: torch.device) -> Tensor:
    """``[B]`` contiguous ids ``0..G-1`` from a tensor or a sequence of hashable uids."""
    if isinstance(index, Tensor):
        return torch.unique(index, return_inverse=True)[1].to(device)
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(u, len(ids)) for u in index], device=device)


def _group_stats(scores: Tensor, index: Tensor | Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``(count, mean, unbiased std)`` of the sample's group, each ``[B]``.

    The std of a singleton group is set to 1 (it is unused: singletons get 0 advantage).
    """
    gid = _group_ids(index, scores.device)
    if gid.shape[0] != scores.shape[0]:
        raise ValueError(f"index has {gid.shape[0]} entries for a batch of {scores.shape[0]}")
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    counts = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, gid, torch.ones_like(scores))
    sums = torch.zeros_like(counts).index_add_(0, gid, scores)
    mean = (sums / counts)[gid]
    sq = torch.zeros_like(counts).index_add_(0, gid, (scores - mean) ** 2)
    # Bessel-corrected like torch.std (and veRL); singletons would divide by zero.
    var = sq / (counts - 1).clamp(min=1)
    std = torch.where(counts > 1, var.sqrt(), torch.ones_like(var))[gid]
    return counts[gid], mean, std


def masked_whiten(x: Tensor, mask: Tensor) -> Tensor:
    """Whiten ``x [B, T]`` with the mean/unbiased variance of its valid tokens, as veRL.

    Fewer than two valid tokens: no Bessel correction (veRL raises; here a single token
    whitens to 0 and an empty batch stays 0). Masked positions come back as 0.
    """
    n = mask.sum()
    mean = (x * mask).sum() / n.clamp(min=1)
    var = (((x - mean) * mask) ** 2).sum() / n.clamp(min=1)
    if n > 1:
        var = var * n / (n - 1)
    return (x - mean) * torch.rsqrt(var + _WHITEN_EPS) * mask


def _reverse_discounted_cumsum(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + gamma * G_{t'}`` with ``t'`` the next *valid* token (veRL 0.9 REINFORCE++).

    Masked positions neither add their reward nor discount: the running return is carried
    across them unchanged, so in a multi-turn rollout the outcome reward reaches the
    earlier turns through the interleaved tool-output tokens (mask 0). Trailing padding
    carries 0, so right-padded masks give the plain return-to-go. Returns are 0 at masked
    positions.
    """
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        running = torch.where(m > 0, rewards[:, t] + gamma * running, running)
        returns[:, t] = running * m
    return returns


@torch.no_grad()
def grpo(token_rewards: Tensor, mask: Tensor, *, index, values=None, baselines=None,
         gamma: float = 1.0, lam: float = 1.0, norm_by_std: bool = True,
         eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """GRPO (Shao et al. 2024, eq. 3): ``(r_i - mean_g) / (std_g + eps)`` per token.

    ``norm_by_std=False`` keeps only the centring (Dr. GRPO, Liu et al. 2025). Singleton
    groups get 0 (veRL instead passes ``r / (1 + eps)`` through; with no group there is
    no baseline, so we give no signal). Returns == advantages, as in veRL.
    """
    scores = token_rewards.sum(-1)
    counts, mean, std = _group_stats(scores, index)
    adv = scores - mean
    if norm_by_std:
        adv = adv / (std + eps)
    adv = torch.where(counts > 1, adv, torch.zeros_like(adv))
    adv = adv.unsqueeze(-1) * mask
    return adv, adv


@torch.no_grad()
def rloo(token_rewards: Tensor, mask: Tensor, *, index, values=None, baselines=None,
         gamma: float = 1.0, lam: float = 1.0, norm_by_std: bool = True,
         eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """RLOO (Ahmadian et al. 2024): ``r_i - mean of the other n-1 samples`` of the group.

    Written as ``n/(n-1) * (r_i - mean_g)``, which equals veRL's form. Singletons get 0.
    """
    scores = token_rewards.sum(-1)
    counts, mean, _ = _group_stats(scores, index)
    adv = torch.where(counts > 1, (scores - mean) * counts / (counts - 1).clamp(min=1),
                      torch.zeros_like(scores))
    adv = adv.unsqueeze(-1) * mask
    return adv, adv


@torch.no_grad()
def reinforce_pp(token_rewards: Tensor, mask: Tensor, *, index=None, values=None,
                 baselines=None, gamma: float = 1.0, lam: float = 1.0,
                 norm_by_std: bool = True, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): discounted return-to-go per token, whitened over the batch.

    The return skips masked positions (carried across gaps, as veRL 0.9.1), see
    :func:`_reverse_discounted_cumsum`.
    """
    returns = _reverse_discounted_cumsum(token_rewards, mask, gamma)
    return masked_whiten(returns, mask), returns


@torch.no_grad()
def reinforce_pp_baseline(token_rewards: Tensor, mask: Tensor, *, index, values=None,
                          baselines=None, gamma: float = 1.0, lam: float = 1.0,
                          norm_by_std: bool = True, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline (Hu 2025; veRL ``reinforce_plus_plus_baseline``).

    ``r_i - mean_g`` broadcast to every valid token, then whitened over all valid tokens
    of the batch (so longer responses weigh more in the batch statistics, as in veRL).
    A singleton group centres to 0 (veRL uses a mean of 0 there instead).
    """
    scores = token_rewards.sum(-1)
    _, mean, _ = _group_stats(scores, index)
    centred = (scores - mean).unsqueeze(-1) * mask
    adv = masked_whiten(centred, mask)
    return adv, adv


@torch.no_grad()
def remax(token_rewards: Tensor, mask: Tensor, *, index=None, values=None, baselines=None,
          gamma: float = 1.0, lam: float = 1.0, norm_by_std: bool = True,
          eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """ReMax (Li et al. 2023): ``G_t - b`` with ``b`` the greedy response's reward.

    ``G_t`` is the undiscounted return-to-go (veRL); with an outcome-only reward it is
    the score at every valid token. No whitening. Returns are ``G_t``.
    """
    if baselines is None:
        raise ValueError("remax needs baselines: [B] rewards of the greedy responses")
    returns = (token_rewards * mask).flip(-1).cumsum(-1).flip(-1) * mask
    adv = returns - baselines.to(returns.dtype).unsqueeze(-1) * mask
    return adv, returns


@torch.no_grad()
def gae(token_rewards: Tensor, mask: Tensor, *, index=None, values=None, baselines=None,
        gamma: float = 1.0, lam: float = 1.0, norm_by_std: bool = True,
        eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al. 2016, eq. 16): ``A_t = sum_l (gamma lam)^l delta_{t+l}``.

    ``delta_t = r_t + gamma V_{t+1} - V_t``; ``V`` after the last valid token is 0.
    Masked positions are skipped (their value and TD error do not propagate), as veRL
    does for interleaved observation tokens. Returns ``A + V`` (before whitening);
    advantages whitened over valid tokens.
    """
    if values is None:
        raise ValueError("gae needs values: [B, T] critic values over response tokens")
    values = values.to(token_rewards.dtype)
    next_v = torch.zeros_like(token_rewards[:, 0])
    last = torch.zeros_like(next_v)
    adv = torch.zeros_like(token_rewards)
    for t in reversed(range(token_rewards.shape[1])):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * m + (1 - m) * last
        next_v = values[:, t] * m + (1 - m) * next_v
        adv[:, t] = last
    returns = (adv + values) * mask
    return masked_whiten(adv, mask), returns


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "grpo": grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
    "remax": remax,
    "gae": gae,
    # veRL spellings, so ported configs work unchanged.
    "reinforce_plus_plus": reinforce_pp,
    "reinforce_plus_plus_baseline": reinforce_pp_baseline,
}


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; "
                         f"known: {sorted(ADVANTAGE_ESTIMATORS)}") from None


def needs_values(name: str) -> bool:
    """True when the estimator needs critic ``values`` (a value model must be trained)."""
    return get_estimator(name) is gae


def needs_baseline(name: str) -> bool:
    """True when the estimator needs ``baselines`` (an extra greedy generation per prompt)."""
    return get_estimator(name) is remax
