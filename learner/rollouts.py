"""Scored groups as learner tensors, aligned on response tokens.

Every per-token quantity the algorithms use (behaviour log-probs, rewards, advantages,
reference log-probs, values) lives on a ``[N, T]`` grid: row = sample, column = response
token (left-aligned), ``T`` = longest response. :func:`response_view` reads the model's
``[b, L-1]`` next-token grid (see :class:`learner.batch.TrainBatch`) into that layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch
from torch import Tensor

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
    def from_groups(cls, groups: list[pa.RecordBatch], learner_version: int) -> Rollouts:
        prompts, responses, behaviour, scores, index, stale, baselines = [], [], [], [], [], [], []
        for g_idx, g in enumerate(groups):
            rows = g.to_pylist()
            base = [r for r in rows if r["is_baseline"]]
            for r in rows:
                if r["is_baseline"]:
                    continue
                prompts.append(r["prompt_token_ids"])
                responses.append(r["response_token_ids"])
                behaviour.append(r["behaviour_logprobs"])
                scores.append(float(r["reward"] or 0.0))
                index.append(g_idx)
                stale.append(learner_version - r["policy_version"])
                baselines.append(float(base[0]["reward"] or 0.0) if base else None)
        T = max(1, max(len(r) for r in responses))
        beh = torch.zeros(len(responses), T)
        mask = torch.zeros(len(responses), T)
        for i, lp in enumerate(behaviour):
            beh[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
            mask[i, :len(lp)] = 1.0
        has_base = all(b is not None for b in baselines)
        return cls(prompts, responses, beh, mask, torch.tensor(scores), torch.tensor(index),
                   torch.tensor(stale, dtype=torch.float32),
                   torch.tensor(baselines) if has_base else None)


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
