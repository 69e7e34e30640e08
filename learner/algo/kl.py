"""KL penalty estimators and KL coefficient controllers (veRL-compatible names).

:func:`kl_penalty` gives a per-token estimate of ``KL(pi || pi_ref)`` from logprobs of the
*sampled* tokens only (Schulman 2020, "Approximating KL divergence"); with
``x = ref - logprob`` and samples from ``pi``:

* ``k1`` (alias ``kl``): ``-x``: unbiased, high variance, can be negative;
* ``k2`` (alias ``mse``): ``x^2 / 2``: biased, low variance, non-negative;
* ``k3`` (alias ``low_var_kl``): ``e^x - x - 1``: unbiased, low variance, non-negative;
* ``abs``: ``|x|``.

A ``+`` suffix (``k1+``, ``kl+``, ``k3+``, ``low_var_kl+``, ``abs+``; veRL 0.9's
straight-through estimators) keeps the *value* of the base estimator but takes the
*gradient* of ``k2``: ``k2 - sg[k2] + sg[base]``. The expectation of k1 and k3 is the KL,
but the expectation of their gradient is not the gradient of the KL; k2's gradient,
``(logprob - ref) * grad logprob``, is (Schulman 2020; veRL ``core_algos.kl_penalty``).
``k2+`` / ``mse+`` are plain ``k2``. In the reward (no gradient) ``+`` changes nothing.

It is used either inside the reward (``token_rewards -= coef * kl``) or as a loss term.
The controllers give the coefficient ``coef`` (``.value``); :func:`reward_kl_mean` is the
KL they are fed.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_BASE_KINDS = ("k1", "kl", "k2", "mse", "k3", "low_var_kl", "abs")
KL_KINDS = KL_BASE_KINDS + tuple(k + "+" for k in KL_BASE_KINDS)
KL_MEANS = ("token", "sequence")


def _kl_value(logprob: Tensor, ref_logprob: Tensor, kind: str) -> Tensor:
    if kind in ("k1", "kl"):
        return logprob - ref_logprob
    if kind in ("k2", "mse"):
        return 0.5 * (logprob - ref_logprob).square()
    if kind in ("k3", "low_var_kl"):
        x = (ref_logprob - logprob).clamp(-20.0, 20.0)
        return (torch.exp(x) - x - 1.0).clamp(-10.0, 10.0)
    if kind == "abs":
        return (logprob - ref_logprob).abs()
    raise ValueError(f"unknown kl penalty {kind!r}; known: {KL_KINDS}")


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate ``[B, T]`` from ``logprob`` and ``ref_logprob`` (both ``[B, T]``).

    ``k3`` clamps ``x`` to ``[-20, 20]`` before ``exp`` and the result to ``[-10, 10]``,
    exactly as veRL: a single token whose logprob has collapsed under one policy would
    otherwise dominate the penalty (and overflow in low precision). ``kind`` ending in
    ``+``: value of the base estimator, gradient of ``k2`` (see the module docstring).
    Masking is left to the caller.
    """
    base = kind[:-1] if kind.endswith("+") else kind
    if base not in KL_BASE_KINDS:
        raise ValueError(f"unknown kl penalty {kind!r}; known: {KL_KINDS}")
    value = _kl_value(logprob, ref_logprob, base)
    if base == kind or base in ("k2", "mse"):
        return value
    k2 = 0.5 * (logprob - ref_logprob).square()
    return k2 - k2.detach() + value.detach()


def reward_kl_mean(kl: Tensor, mask: Tensor, how: str = "token") -> float:
    """The batch KL that the KL-in-reward controller reads, from ``kl [B, T]`` and ``mask [B, T]``.

    * ``token``: ``sum(m * kl) / sum(m)``, every valid token of the batch weighs the same;
    * ``sequence``: ``mean_i (sum_t m kl / sum_t m)``, each sequence weighs the same
      (veRL ``apply_kl_penalty``: per-sequence ``masked_mean`` then the batch mean; an
      all-masked row counts as 0).
    """
    m = mask.to(kl.dtype)
    x = torch.where(m > 0, kl, torch.zeros_like(kl)) * m
    if how == "token":
        return float(x.sum() / m.sum().clamp(min=1.0))
    if how == "sequence":
        return float((x.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()) if x.shape[0] else 0.0
    raise ValueError(f"unknown kl mean {how!r}; known: {KL_MEANS}")


class FixedKLController:
    """Constant coefficient; ``update`` is a no-op (veRL ``FixedKLController``)."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Adaptive coefficient of Ziegler et al. 2019 (arXiv 1909.08593), as veRL.

    ``e = clip(current_kl / target_kl - 1, -0.2, 0.2)``;
    ``value *= 1 + e * n_steps / horizon``: the coefficient grows while the measured KL
    is above target and shrinks while below, at most 20% per ``horizon`` steps.
    """

    def __init__(self, init_coef: float, target_kl: float, horizon: int) -> None:
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target_kl)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
