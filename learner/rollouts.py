"""Scored groups as learner tensors, aligned on response tokens.

Every per-token quantity the algorithms use (behaviour log-probs, rewards, advantages,
reference log-probs, values) lives on a ``[N, T]`` grid: row = sample, column = response
token (left-aligned), ``T`` = longest response. :func:`response_view` reads the model's
``[b, L-1]`` next-token grid (see :class:`learner.batch.TrainBatch`) into that layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from asyncrl.transport.items import ScoredGroup, behaviour_grid
from learner.batch import TrainBatch


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    behaviour: Tensor   # [N, T]
    mask: Tensor        # [N, T] 1 on response tokens
    scores: Tensor      # [N] outcome reward per sample
    index: Tensor       # [N] group ordinal (samples of one prompt share it)
    staleness: Tensor   # [N] learner version - generating version
    baselines: Tensor | None  # [N] reward of the group's greedy reply (ReMax), if generated

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1)

    @classmethod
    def from_groups(cls, groups: Sequence[pa.RecordBatch | ScoredGroup], learner_version: int) -> Rollouts:
        """The trained samples of ``groups`` in order (greedy baseline rows become ``baselines``);
        behaviour log-probs go from Arrow buffers to the ``[N, T]`` grid without Python lists."""
        views = [g if isinstance(g, ScoredGroup) else ScoredGroup(g, validate=False) for g in groups]
        beh, mask = behaviour_grid(views)
        counts = [v.num_samples for v in views]
        repeat = torch.tensor(counts)
        prompts = [ids for v in views for ids in v.prompt_token_ids()]
        responses = [ids for v in views for ids in v.response_token_ids()]
        scores = torch.from_numpy(np.concatenate([v.rewards for v in views]).astype(np.float32))
        index = torch.repeat_interleave(torch.arange(len(views)), repeat)
        versions = torch.tensor([v.policy_version for v in views], dtype=torch.float32)
        stale = torch.repeat_interleave(learner_version - versions, repeat)
        base = [v.baseline_reward for v in views]
        baselines = None
        if all(b is not None for b in base):
            baselines = torch.repeat_interleave(torch.tensor([float(b or 0.0) for b in base]), repeat)
        return cls(prompts, responses, beh, mask, scores, index, stale, baselines)

def response_view(grid: Tensor, tb: TrainBatch, T: int) -> Tensor:
    """``[R, L-1]`` next-token grid (padded or packed) → ``[n, T]`` left-aligned response
    tokens of each sample (0 past each end)."""
    width = grid.shape[1]
    idx = tb.response_starts().unsqueeze(1) + torch.arange(T, device=grid.device).unsqueeze(0)
    out = grid[tb.rows].gather(1, idx.clamp(max=width - 1))
    valid = torch.arange(T, device=grid.device).unsqueeze(0) < tb.response_lens.unsqueeze(1)
    return out * valid


def outcome_token_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Outcome rewards placed on each response's last token: ``[N]`` → ``[N, T]``."""
    out = torch.zeros_like(mask)
    lengths = mask.sum(-1).long()
    rows = torch.nonzero(lengths > 0).squeeze(1)
    out[rows, lengths[rows] - 1] = scores[rows].to(out.dtype)
    return out


def sample_lengths(ro: Rollouts) -> list[int]:
    return [len(p) + len(r) for p, r in zip(ro.prompt_ids, ro.response_ids)]
