"""Lay per-sample (prompt, response, behaviour logprobs) lists out as model-ready tensors.

Two layouts, one set of fields:

* **padded** (``packed=False``): one sample per row, right-padded, with an attention mask.
* **packed** (``packed=True``): samples back to back in rows of at most ``row_tokens``
  tokens (at least the longest sample; first-fit decreasing), padding only at row ends.
  ``attention_mask`` is ``None`` and ``position_ids`` restart at 0 for each sample;
  transformers then builds a block-diagonal causal mask from the position ids (and
  flash-attention varlen uses the same signal on GPU), so each sample attends only to
  itself and the computation equals the padded one, minus most pad tokens. Without a
  varlen kernel (CPU) attention costs ``row length²`` per row, so rows stay short there;
  with flash-attention one long row is best.

Sample ``i`` sits in row ``rows[i]`` starting at column ``offsets[i]``.

Alignment convention, used by every tensor of width ``L - 1``: position ``t`` holds
quantities for predicting ``input_ids[t + 1]`` from the prefix up to ``t``. For a sample
with prompt length ``p`` and response length ``r`` at offset ``o``, the response targets
sit at positions ``o + p - 1 .. o + p + r - 2``. Feed ``model(...).logits[:, :-1]`` and
``targets`` to :func:`learner.algo.logprobs.token_logprobs` to get logprobs on that grid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class TrainBatch:
    """A padded or packed training batch (see the module docstring).

    Attributes:
        input_ids: ``[R, L]`` int64, prompt + response tokens (padded with ``pad_id``).
        attention_mask: ``[R, L]`` int64, 1 on real tokens; ``None`` when packed.
        position_ids: ``[R, L]`` int64, 0.. within each sample, 0 on padding.
        targets: ``[R, L-1]`` int64, ``input_ids[:, 1:]``.
        response_mask: ``[R, L-1]`` float32, 1 where the target is a response token.
        behaviour_logprobs: ``[R, L-1]`` float32, generator logprobs at response targets.
        prompt_lens, response_lens: ``[N]`` int64, per-sample lengths.
        rows, offsets: ``[N]`` int64, where each sample starts.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    position_ids: Tensor
    targets: Tensor
    response_mask: Tensor
    behaviour_logprobs: Tensor
    prompt_lens: Tensor
    response_lens: Tensor
    rows: Tensor
    offsets: Tensor

    @property
    def packed(self) -> bool:
        return self.attention_mask is None

    @property
    def num_tokens(self) -> int:
        """Tokens the model computes on (padding included)."""
        return int(self.input_ids.numel())

    def to(self, device: torch.device | str) -> TrainBatch:
        """A copy with every tensor on ``device``."""
        moved: dict[str, Any] = {  # None only where the field is Optional
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device) for f in fields(self)}
        return TrainBatch(**moved)

    def response_starts(self) -> Tensor:
        """``[N]`` grid column predicting each sample's first response token."""
        return self.offsets + self.prompt_lens - 1

    def gather_response(self, values: Tensor) -> list[list[float]]:
        """Per-sample response values from a ``[R, L-1]`` grid (inverse of placement)."""
        grid = values.detach().float().cpu()
        starts, rows = self.response_starts().tolist(), self.rows.tolist()
        return [grid[row, s: s + r].tolist() for row, s, r in zip(rows, starts, self.response_lens.tolist())]


def _check(prompt_ids: list[list[int]], response_ids: list[list[int]],
           behaviour_logprobs: list[list[float]]) -> None:
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


def build_batch(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    behaviour_logprobs: list[list[float]],
    pad_id: int,
    packed: bool = False,
    row_tokens: int | None = None,
) -> TrainBatch:
    """Lay samples out padded (one per row) or packed (several per row, see the module doc).

    Empty responses are allowed: that sample's ``response_mask`` is all zero, so it adds
    nothing to a token-mean loss. Every prompt must have at least one token, since the
    first response token is predicted from the last prompt position.
    """
    _check(prompt_ids, response_ids, behaviour_logprobs)
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    n = len(lengths)
    if packed:
        rows, offsets, fill = pack_rows(lengths, max(row_tokens or 0, max(lengths)))
        R, L = len(fill), max(fill)
    else:
        rows, offsets = list(range(n)), [0] * n
        R, L = n, max(lengths)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    attention_mask = None if packed else torch.zeros((R, L), dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    response_mask = torch.zeros((R, max(L - 1, 1)), dtype=torch.float32)
    behaviour = torch.zeros((R, max(L - 1, 1)), dtype=torch.float32)

    for p, r, lp, row, off, m in zip(prompt_ids, response_ids, behaviour_logprobs, rows, offsets, lengths):
        input_ids[row, off:off + m] = torch.tensor(p + r, dtype=torch.long)
        position_ids[row, off:off + m] = torch.arange(m)
        if attention_mask is not None:
            attention_mask[row, off:off + m] = 1
        if r:
            start = off + len(p) - 1  # this position predicts the first response token
            response_mask[row, start: start + len(r)] = 1.0
            behaviour[row, start: start + len(r)] = torch.tensor(lp, dtype=torch.float32)

    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        targets=input_ids[:, 1:].clone(),
        response_mask=response_mask[:, :L - 1],
        behaviour_logprobs=behaviour[:, :L - 1],
        prompt_lens=torch.tensor([len(p) for p in prompt_ids], dtype=torch.long),
        response_lens=torch.tensor([len(r) for r in response_ids], dtype=torch.long),
        rows=torch.tensor(rows, dtype=torch.long),
        offsets=torch.tensor(offsets, dtype=torch.long),
    )


def pack_rows(lengths: list[int], capacity: int) -> tuple[list[int], list[int], list[int]]:
    """First-fit decreasing: each sample's row and offset, and each row's filled length."""
    rows, offsets = [0] * len(lengths), [0] * len(lengths)
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((k for k, f in enumerate(fill) if f + lengths[i] <= capacity), len(fill))
        if r == len(fill):
            fill.append(0)
        rows[i], offsets[i] = r, fill[r]
        fill[r] += lengths[i]
    return rows, offsets, fill


def build_lm_batch(seqs: list[list[int]], loss_masks: list[list[float]], pad_id: int,
                   packed: bool = False, row_tokens: int | None = None) -> TrainBatch:
    """Language-modelling layout: every token after the first is a target, and
    ``response_mask`` carries each target's loss weight (``loss_masks[i][t]`` weighs
    predicting token ``t``). Used by SFT, where the weights pick assistant tokens."""
    tb = build_batch([s[:1] for s in seqs], [s[1:] for s in seqs], [m[1:] for m in loss_masks], pad_id, packed,
                     row_tokens)
    tb.response_mask, tb.behaviour_logprobs = tb.behaviour_logprobs, torch.zeros_like(tb.behaviour_logprobs)
    return tb
