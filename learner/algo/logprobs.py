"""Log-probabilities and entropies from logits, computed memory-consciously in float32.

The algorithm math lives in :mod:`learner.algo.advantages`, :mod:`learner.algo.losses`,
:mod:`learner.algo.kl` and :mod:`learner.algo.offpolicy`; the trainer is :mod:`learner.step`.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
