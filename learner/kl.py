"""KL penalty estimators and KL coefficient controllers (veRL-compatible names).

:func:`kl_penalty` gives a per-token estimate of ``KL(pi || pi_ref)`` from logprobs of the
*sampled* tokens only (Schulman 2020, "Approximating KL divergence"); with
``x = ref - logprob`` and samples from ``pi``:

* ``k1`` (alias ``kl``): ``-x``: unbiased, high variance, can be negative;
* ``k2`` (alias ``mse``): ``x^2 / 2``: biased, low variance, non-negative;
* ``k3`` (alias ``low_var_kl``): ``e^x - x - 1``: unbiased, low variance, non-negative;
* ``abs``: ``|x|``.

It is used either inside the reward (``token_rewards -= coef * kl``) or as a loss term.
The controllers give the coefficient ``coef`` (``.value``).
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_KINDS = ("k1", "kl", "k2", "mse", "k3", "low_var_kl", "abs")


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate ``[B, T]`` from ``logprob`` and ``ref_logprob`` (both ``[B, T]``).

    ``k3`` clamps ``x`` to ``[-20, 20]`` before ``exp`` and the result to ``[-10, 10]``,
    exactly as veRL: a single token whose logprob has collapsed under one policy would
    otherwise dominate the penalty (and overflow in low precision). Masking is left to
    the caller.
    """
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
