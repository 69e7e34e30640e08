"""Pack per-sample (prompt, response, behaviour logprobs) lists into padded tensors.

Alignment convention, used by every tensor of length ``L - 1``: position ``t`` holds
quantities for predicting ``input_ids[t + 1]`` from the prefix ``input_ids[: t + 1]``.
So for a sample with prompt length ``p`` and response length ``r``, the response
targets sit at positions ``p - 1 .. p + r - 2``. Feed ``model(...).logits[:, :-1]``
and ``targets`` to :func:`learner.algo.token_logprobs` to get logprobs on that grid.

Right padding keeps every real token at the same index it has unpadded, so with
``position_ids`` counting from 0 a causal model sees exactly the unpadded computation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class TrainBatch:
    """A right-padded training batch.

    Attributes:
        input_ids: ``[B, L]`` int64, prompt + response, padded with ``pad_id``.
        attention_mask: ``[B, L]`` int64, 1 on real tokens.
        position_ids: ``[B, L]`` int64, 0.. on real tokens, 0 on padding.
        targets: ``[B, L-1]`` int64, ``input_ids[:, 1:]``.
        response_mask: ``[B, L-1]`` float32, 1 where the target is a response token.
        behaviour_logprobs: ``[B, L-1]`` float32, generator logprobs at response
            targets, 0 elsewhere.
        prompt_lens, response_lens: ``[B]`` int64, per-sample lengths.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    targets: Tensor
    response_mask: Tensor
    behaviour_logprobs: Tensor
    prompt_lens: Tensor
    response_lens: Tensor

    def to(self, device: torch.device | str) -> "TrainBatch":
        """A copy with every tensor on ``device``."""
        return TrainBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def gather_response(self, values: Tensor) -> list[list[float]]:
        """Per-sample response values from a ``[B, L-1]`` grid (inverse of placement)."""
        return gather_response(values, self.prompt_lens, self.response_lens)


def gather_response(values: Tensor, prompt_lens: Tensor, response_lens: Tensor) -> list[list[float]]:
    """Slice each row's response positions ``p-1 .. p+r-2`` out of ``values [B, L-1]``."""
    rows = values.detach().float().cpu()
    out = []
    for b, (p, r) in enumerate(zip(prompt_lens.tolist(), response_lens.tolist())):
        out.append(rows[b, p - 1: p - 1 + r].tolist())
    return out


def build_batch(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    behaviour_logprobs: list[list[float]],
    pad_id: int,
) -> TrainBatch:
    """Right-pad prompt+response sequences and place behaviour logprobs on the target grid.

    Empty responses are allowed: that row's ``response_mask`` is all zero, so it adds
    nothing to a token-mean loss. Every prompt must have at least one token, since the
    first response token is predicted from the last prompt position.
    """
    if not (len(prompt_ids) == len(response_ids) == len(behaviour_logprobs)):
        raise ValueError(
            f"batch lists differ in length: {len(prompt_ids)} prompts, "
            f"{len(response_ids)} responses, {len(behaviour_logprobs)} logprob lists")
    if not prompt_ids:
        raise ValueError("empty batch")
    for i, (p, r, lp) in enumerate(zip(prompt_ids, response_ids, behaviour_logprobs)):
        if not p:
            raise ValueError(f"sample {i}: empty prompt (no position predicts its first response token)")
        if len(lp) != len(r):
            raise ValueError(f"sample {i}: {len(r)} response tokens but {len(lp)} behaviour logprobs")

    B = len(prompt_ids)
    L = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    response_mask = torch.zeros((B, L - 1), dtype=torch.float32)
    behaviour = torch.zeros((B, L - 1), dtype=torch.float32)

    for b, (p, r, lp) in enumerate(zip(prompt_ids, response_ids, behaviour_logprobs)):
        n = len(p) + len(r)
        input_ids[b, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[b, :n] = 1
        position_ids[b, :n] = torch.arange(n)
        if r:
            start = len(p) - 1  # this position predicts the first response token
            response_mask[b, start: start + len(r)] = 1.0
            behaviour[b, start: start + len(r)] = torch.tensor(lp, dtype=torch.float32)

    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        targets=input_ids[:, 1:].clone(),
        response_mask=response_mask,
        behaviour_logprobs=behaviour,
        prompt_lens=torch.tensor([len(p) for p in prompt_ids], dtype=torch.long),
        response_lens=torch.tensor([len(r) for r in response_ids], dtype=torch.long),
    )
