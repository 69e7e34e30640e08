"""Scored groups as learner tensors, aligned on response tokens.

Every per-token quantity the algorithms use (behaviour log-probs, rewards, advantages,
reference log-probs, values) lives on a ``[N, T]`` grid: row = sample, column = response
token (left-aligned), ``T`` = longest response. :func:`response_view` reads the model's
``[b, L-1]`` next-token grid (see :class:`learner.batch.TrainBatch`) into that layout.

Multi-turn episodes (rollout/episode.py) put observation tokens (tool output, user messages) in the
response between the model's turns: they are in ``response_ids`` (the model reads them) but
``mask`` is 0 there, so no loss, entropy, KL, advantage or token count ever includes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from asyncrl.transport.items import ScoredGroup, behaviour_grid, token_grid
from learner.batch import TrainBatch


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    behaviour: Tensor   # [N, T] behaviour log-probs (0 on observation tokens)
    mask: Tensor        # [N, T] the loss mask: 1 on the model's response tokens, 0 on observations and past each end
    scores: Tensor      # [N] outcome reward per sample
    index: Tensor       # [N] group ordinal (samples of one prompt share it)
    staleness: Tensor   # [N] learner version - the version of the sample's oldest token
    baselines: Tensor | None  # [N] reward of the group's greedy reply (ReMax), if generated
    token_staleness: Tensor | None = None  # [N, T] learner version - each token's version (0 where mask is 0)

    def staleness_grid(self) -> Tensor:
        """``[N, T]`` per-token staleness (off-policy correction weighs each token by the weights that
        made it; a sync mid-episode makes the turns of one sample differ)."""
        if self.token_staleness is not None:
            return self.token_staleness
        return self.staleness.unsqueeze(1).expand_as(self.mask)

    @property
    def lengths(self) -> Tensor:
        """``[N]`` trained tokens per sample (the model's own; a single-turn response's length)."""
        return self.mask.sum(-1)

    @classmethod
    def from_groups(cls, groups: Sequence[pa.RecordBatch | ScoredGroup], learner_version: int) -> Rollouts:
        """The trained samples of ``groups`` in order (greedy baseline rows become ``baselines``);
        behaviour log-probs go from Arrow buffers to the ``[N, T]`` grid without Python lists."""
        views = [g if isinstance(g, ScoredGroup) else ScoredGroup(g, validate=False) for g in groups]
        beh, _ = behaviour_grid(views)
        T = beh.shape[1]
        mask = torch.from_numpy(token_grid(views, "loss_mask", T, np.float32))
        token_versions = torch.from_numpy(token_grid(views, "token_versions", T, np.float32))
        token_stale = (learner_version - token_versions) * mask
        counts = [v.num_samples for v in views]
        repeat = torch.tensor(counts)
        prompts = [ids for v in views for ids in v.prompt_token_ids()]
        responses = [ids for v in views for ids in v.response_token_ids()]
        scores = torch.from_numpy(np.concatenate([v.rewards for v in views]).astype(np.float32))
        index = torch.repeat_interleave(torch.arange(len(views)), repeat)
        versions = torch.tensor([v.policy_version for v in views], dtype=torch.float32)
        stale = torch.repeat_interleave(learner_version - versions, repeat)
        if views:  # a sample's own oldest token (a group's policy_version is its oldest row's)
            stale = torch.where(mask > 0, token_stale, torch.full_like(token_stale, -1e9)).amax(-1)
            stale = torch.where(mask.sum(-1) > 0, stale, torch.repeat_interleave(learner_version - versions, repeat))
        base = [v.baseline_reward for v in views]
        baselines = None
        if all(b is not None for b in base):
            baselines = torch.repeat_interleave(torch.tensor([float(b or 0.0) for b in base]), repeat)
        return cls(prompts, responses, beh, mask, scores, index, stale, baselines, token_stale)

def response_view(grid: Tensor, tb: TrainBatch, T: int) -> Tensor:
    """``[R, L-1]`` next-token grid (padded or packed) → ``[n, T]`` left-aligned response
    tokens of each sample (0 past each end)."""
    width = grid.shape[1]
    idx = tb.response_starts().unsqueeze(1) + torch.arange(T, device=grid.device).unsqueeze(0)
    out = grid[tb.rows].gather(1, idx.clamp(max=width - 1))
    valid = torch.arange(T, device=grid.device).unsqueeze(0) < tb.response_lens.unsqueeze(1)
    return out * valid


def outcome_token_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Outcome rewards placed on each response's last trained token (the last 1 of a possibly
    gapped mask): ``[N]`` → ``[N, T]``."""
    out = torch.zeros_like(mask)
    T = mask.shape[1]
    last = T - 1 - (mask.flip(-1) > 0).float().argmax(-1)  # the last column where mask is 1
    rows = torch.nonzero(mask.sum(-1) > 0).squeeze(1)
    out[rows, last[rows]] = scores[rows].to(out.dtype)
    return out


def sample_lengths(ro: Rollouts) -> list[int]:
    return [len(p) + len(r) for p, r in zip(ro.prompt_ids, ro.response_ids)]
