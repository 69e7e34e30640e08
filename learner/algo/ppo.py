"""The PPO schedule of one learner step: mini-batches, epochs, and where "old" comes from.

A learner *step* trains on one batch of ``learner.prompts_per_step`` scored groups and
counts as one policy version. Within it the batch's groups are cut into
``learner.ppo_mini_batches`` equal, contiguous mini-batches (no shuffle, as veRL's
default, so a resumed run repeats the same cut), and the pass over them is repeated
``learner.ppo_epochs`` times: ``ppo_mini_batches x ppo_epochs`` optimiser steps::

    for epoch in range(ppo_epochs):
        for members in mini_batches(ro.index, ppo_mini_batches):
            ...micro-batched forward/backward over members, then one optimiser step

The PPO "old" (proximal) log-probs are fixed for the whole step (:func:`old_source`):

* ``recompute`` (default): the learner's weights before the step's first update, from
  one no-grad pass. With one mini-batch and one epoch that pass would equal the first
  (only) forward, so ``old = logprobs.detach()`` is used instead and the pass is skipped.
* ``behaviour``: veRL's bypass mode, ``old`` = the generator's log-probs; the PPO ratio
  and its clip are then taken against the behaviour policy directly.

Loss normalisation (:class:`Accumulator`): each micro-batch's policy loss is aggregated
over its own tokens (or sequences), multiplied back into a sum by its own count, and the
gradient of the summed mini-batch is divided by the count over every micro-batch and
rank at the end. The update is thus the same whatever the micro-batch size, token
budget, packing or world size, also when tokens are filtered out of the loss.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from asyncrl.config import AlgorithmSection, LearnerSection
from learner.rollouts import Rollouts

# How a micro-batch's metric is weighted: aggregates of the loss itself by the loss's own
# count (kept tokens, or sequences), the policy loss's token means by kept tokens, every
# other metric (means over valid tokens) by the micro-batch's share of the mini-batch.
LOSS_KEYS = ("loss", "pg_loss", "kl_loss")
KEPT_KEYS = ("clip_frac", "clip_frac_lower", "dual_clip_frac", "ppo_kl")


@dataclass
class PreparedBatch:
    """One batch after phase A: everything its optimiser steps read, ``[N, T]`` / ``[N]``
    on the response grid of :mod:`learner.rollouts` (``old`` is None when taken from the
    first forward or from ``behaviour``)."""

    ro: Rollouts
    adv: Tensor
    returns: Tensor
    ref: Tensor | None
    values: Tensor | None
    old: Tensor | None
    stale_weights: Tensor  # [N, T] per token (a sync mid-episode gives one sample tokens of two versions)
    stale_keep: Tensor     # [N, T]
    # [N] mean learner-minus-behaviour log-prob per response token, set at each sample's first
    # update (the learner's weights before it changed them): what the sample dumps show
    logprob_gap: Tensor = field(default_factory=lambda: torch.zeros(0))


def mini_batches(index: Tensor, n: int) -> list[list[int]]:
    """Sample indices of ``n`` mini-batches, each holding ``G / n`` whole, contiguous groups.

    ``index``: ``[N]`` group ordinal per sample (0..G-1, as :class:`Rollouts` numbers them).
    """
    groups = int(index.max()) + 1 if index.numel() else 0
    if n < 1 or groups % n:
        raise ValueError(f"learner.ppo_mini_batches={n} does not divide the batch's {groups} groups "
                         f"(learner.prompts_per_step)")
    per = groups // n
    ids = index.tolist()
    return [[i for i, g in enumerate(ids) if m * per <= g < (m + 1) * per] for m in range(n)]


def old_source(learner: LearnerSection, algo: AlgorithmSection) -> Literal["pass", "forward", "behaviour"]:
    """Where the step's PPO old log-probs come from (see the module docstring)."""
    if algo.old_logprobs == "behaviour":
        return "behaviour"
    return "forward" if learner.ppo_mini_batches == 1 and learner.ppo_epochs == 1 else "pass"


def scale_grads(model: torch.nn.Module, factor: float) -> None:
    """Multiply every accumulated gradient of ``model`` by ``factor`` (sharded ones too)."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)


@dataclass
class Accumulator:
    """Metrics of the micro-batches of one optimiser step, and the policy loss's counts.

    ``add(metrics, share, count, kept)``: ``share`` weighs ordinary metrics (the
    micro-batch's fraction of the mini-batch's valid tokens or sequences), ``count`` the
    :data:`LOSS_KEYS` (kept tokens, or sequences, the loss was aggregated over), ``kept``
    the :data:`KEPT_KEYS`. Once the ranks' sums are added up, the weighted sums of the last
    two are divided by the totals of ``count`` and ``kept``.
    """

    sums: dict[str, defaultdict[str, float]] = field(
        default_factory=lambda: {"share": defaultdict(float), "count": defaultdict(float), "kept": defaultdict(float)})
    extremes: dict[str, dict[str, float]] = field(default_factory=lambda: {"max": {}, "min": {}})
    count: float = 0.0
    kept: float = 0.0

    def add(self, metrics: dict[str, float], share: float, count: float, kept: float) -> None:
        self.count += count
        self.kept += kept
        for k, v in metrics.items():
            if k.endswith(("_max", "_min")):
                kind = k[-3:]
                pick = max if kind == "max" else min
                self.extremes[kind][k] = pick(self.extremes[kind].get(k, v), v)
            elif k in LOSS_KEYS:
                self.sums["count"][k] += v * count
            elif k in KEPT_KEYS:
                self.sums["kept"][k] += v * kept
            else:
                self.sums["share"][k] += v * share

    def finish(self, totals: dict[str, float], summed: dict[str, float]) -> dict[str, float]:
        """Metrics from the ranks' ``summed`` weighted sums and the ``totals`` of count and kept."""
        out = dict(summed)
        for kind in ("count", "kept"):
            out.update({k: summed[k] / max(totals[kind], 1.0) for k in self.sums[kind]})
        return out


def mean_over_updates(updates: list[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from its optimiser steps': extremes of ``*_max`` / ``*_min``, means
    of the rest."""
    out: dict[str, float] = {}
    for k in updates[0]:
        vals = [u[k] for u in updates if k in u]
        out[k] = max(vals) if k.endswith("_max") else min(vals) if k.endswith("_min") else sum(vals) / len(vals)
    return out
