"""DAPO helpers (Yu et al. 2025): soft overlong punishment and dynamic-sampling filter."""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(response_lens: Tensor, max_len: int, buffer: int, factor: float) -> Tensor:
    """Soft overlong punishment, DAPO eq. 13, scaled by ``factor``; ``[B] -> [B]`` float.

    With ``L = response_lens``, ``start = max_len - buffer``:
    ``0`` if ``L <= start``; ``(start - L) / buffer * factor`` if ``start < L <= max_len``
    (linear from 0 down to ``-factor``); ``-factor`` if ``L > max_len``. Added to the
    outcome reward, it discourages truncation without the cliff of a hard penalty.
    """
    if buffer <= 0 or buffer > max_len:
        raise ValueError(f"need 0 < buffer <= max_len, got buffer={buffer}, max_len={max_len}")
    lens = response_lens.to(torch.float32)
    start = float(max_len - buffer)
    ramp = (start - lens) / buffer * factor
    out = torch.where(lens <= start, torch.zeros_like(lens), ramp)
    return torch.where(lens > max_len, torch.full_like(lens, -factor), out)


def groups_with_signal(rewards: Tensor, eps: float = 1e-8) -> Tensor:
    """``[G, n] -> [G]`` bool: False where all rewards of a group are equal (within ``eps``).

    Such groups have zero group-relative advantage and so no gradient; DAPO's dynamic
    sampling drops them and samples more prompts. A group of one sample is False.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [G, n], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] == 0:
        return torch.zeros(rewards.shape[0], dtype=torch.bool, device=rewards.device)
    return (rewards.amax(dim=1) - rewards.amin(dim=1)) > eps
