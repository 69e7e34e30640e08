"""Which scored groups a step trains on: the filters :meth:`Orchestrator.next_batch` applies.

Selection itself (oldest first, final only when nothing older is still in flight) is
:meth:`learner.orchestrator.buffer.GroupBuffer.select`; these drop what a step must not train on:

- :func:`split_stale`: groups generated more than ``learner.max_staleness`` versions ago
  (``algorithm.stale_policy = "drop"``; they can only exist after a resume or a slow re-dispatch);
- :func:`split_by_signal`: with DAPO dynamic sampling (``algorithm.dynamic_sampling``), groups whose
  rewards are all equal (no gradient under group-normalised advantages).
"""

from __future__ import annotations

import numpy as np
import torch

from asyncrl.transport.items import ScoredGroup
from learner.algo.dapo import groups_with_signal

Split = tuple[list[ScoredGroup], list[ScoredGroup]]  # (kept, dropped)


def split_stale(groups: list[ScoredGroup], version: int, max_staleness: int) -> Split:
    fresh = [g for g in groups if version - g.policy_version <= max_staleness]
    return fresh, [g for g in groups if version - g.policy_version > max_staleness]


def split_by_signal(groups: list[ScoredGroup]) -> Split:
    """Groups whose trained samples' rewards differ, and those where all are equal."""
    if not groups:
        return [], []
    signal = groups_with_signal(torch.from_numpy(np.stack([g.rewards for g in groups]))).tolist()
    return [g for g, s in zip(groups, signal) if s], [g for g, s in zip(groups, signal) if not s]


def staleness(groups: list[ScoredGroup], version: int) -> list[int]:
    """How many versions behind ``version`` each group's samples started."""
    return [version - g.policy_version for g in groups]
