"""Typed items over today's wire formats: prompts out (msgpack), scored groups back (Arrow).

The bytes on the wire do not change: a :class:`PromptItem` is one entry of a ``prompts``
control message (:mod:`asyncrl.messages`), a :class:`ScoredGroup` is one validated Arrow record
batch of :data:`asyncrl.schema.TRAJECTORY_SCHEMA`. Payloads written before these types existed
decode (optional prompt fields take their defaults); malformed ones raise the codecs' errors
(:class:`asyncrl.messages.MessageError`, :class:`asyncrl.schema.SchemaError`).

    items = [PromptItem(prompt_id=1, group_id=7, split="train", data_source="arith", ground_truth="3",
                        prompt_token_ids=[1, 2], n=4, temperature=1.0, max_tokens=16, seed=5)]
    assert decode_prompts(messages.decode(encode_prompts(items))) == items
    group = ScoredGroup.from_wire(data)          # validated; group.group_id, group.rewards, ...
    beh, mask = group.behaviour_logprobs()       # [n, T] float32 tensors, no Python lists
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from asyncrl import messages, schema

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class PromptItem:
    """One prompt to generate ``n`` samples for (one group): what the dispatcher sends.

    ``seed`` (train items) makes sampling reproducible across resumes; ``attempt`` counts
    re-dispatches; ``greedy_baseline`` (ReMax) asks for one extra greedy reply, sent back as the
    group's ``is_baseline`` row.
    """

    prompt_id: int
    group_id: int
    split: str  # "train" or "val"
    data_source: str
    ground_truth: str
    prompt_token_ids: list[int]
    n: int
    temperature: float
    max_tokens: int
    seed: int | None = None
    attempt: int = 0
    greedy_baseline: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map (``seed`` only when set, ``greedy_baseline`` only when true, as before)."""
        d = asdict(self)
        if d["seed"] is None:
            del d["seed"]
        if not d["greedy_baseline"]:
            del d["greedy_baseline"]
        messages.check_prompt_item(d)
        return d

    @classmethod
    def from_wire(cls, d: Any, *, check: bool = True) -> PromptItem:
        """Validate one ``prompts.items`` map (MessageError if malformed; ``check=False``: already
        validated by :func:`asyncrl.messages.decode`); unknown keys are ignored."""
        if check:
            messages.check_prompt_item(d)
        opt = {k: d.get(k, default) for k, (_, default) in messages.PROMPT_ITEM_OPTIONAL.items()}
        fields = {k: d[k] for k in messages.PROMPT_ITEM_FIELDS}
        fields["temperature"] = float(fields["temperature"])
        return cls(**fields, **opt)


def encode_prompts(items: Sequence[PromptItem]) -> bytes:
    """A validated ``prompts`` control message."""
    return messages.encode("prompts", items=[it.to_wire() for it in items])


def decode_prompts(msg: dict[str, Any]) -> list[PromptItem]:
    """The items of a decoded ``prompts`` message (:func:`asyncrl.messages.decode` validated them)."""
    return [PromptItem.from_wire(d, check=False) for d in msg["items"]]


class ScoredGroup:
    """A typed view over one validated trajectory record batch (one group, ``num_rows`` samples).

    Per-group scalars are read once; per-sample columns come out as numpy arrays or tensors
    straight from Arrow buffers. Everything called ``rewards``/``behaviour``/``*_token_ids`` covers
    the trained samples only (``is_baseline`` rows excluded); ``baseline_reward`` is the greedy
    reply's. Before the reward worker scored it, rewards read 0.
    """

    def __init__(self, batch: pa.RecordBatch, *, validate: bool = True) -> None:
        if validate:
            schema.validate_batch(batch)
        self.batch = batch
        first = {name: batch.column(name)[0].as_py() for name in
                 ("group_id", "prompt_id", "split", "attempt", "generator_index")}
        self.group_id: int = first["group_id"]
        self.prompt_id: int = first["prompt_id"]
        # the oldest weights version of any row: an episode counts by its oldest token, a group by
        # its oldest row (staleness admission and drops read this)
        self.policy_version: int = int(pc.min(batch.column("policy_version")).as_py())
        self.split: str = first["split"]
        self.attempt: int = first["attempt"]
        self.generator_index: int = first["generator_index"]

    @classmethod
    def from_wire(cls, data: bytes) -> ScoredGroup:
        """Decode and validate Arrow IPC bytes (SchemaError if malformed)."""
        return cls(schema.decode_batch(data), validate=False)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> ScoredGroup:
        return cls(schema.make_batch(rows), validate=False)

    def to_wire(self) -> bytes:
        return schema.encode_batch(self.batch)

    def with_rewards(self, rewards: list[float], errors: list[str | None]) -> ScoredGroup:
        """A copy with ``reward``/``reward_error`` filled, one per row (baseline rows included)."""
        return ScoredGroup(schema.with_rewards(self.batch, rewards, errors), validate=False)

    def __repr__(self) -> str:
        return (f"ScoredGroup(group_id={self.group_id}, prompt_id={self.prompt_id}, split={self.split!r}, "
                f"policy_version={self.policy_version}, rows={self.num_rows})")

    @property
    def num_rows(self) -> int:
        """All rows, the greedy baseline's included."""
        return self.batch.num_rows

    @cached_property
    def is_baseline(self) -> np.ndarray:
        """``[num_rows]`` bool."""
        return self.batch.column("is_baseline").to_numpy(zero_copy_only=False)

    @cached_property
    def _trained(self) -> pa.RecordBatch:
        if not self.is_baseline.any():
            return self.batch
        return self.batch.filter(pa.array(~self.is_baseline))

    @property
    def num_samples(self) -> int:
        """Trained samples (rows that are not the baseline)."""
        return self._trained.num_rows

    @cached_property
    def rewards(self) -> np.ndarray:
        """``[num_samples]`` float32, null (unscored) as 0."""
        return pc.fill_null(self._trained.column("reward"), 0.0).to_numpy(zero_copy_only=False)

    @property
    def baseline_reward(self) -> float | None:
        """The greedy reply's reward (ReMax), or None when the group has no baseline row."""
        if not self.is_baseline.any():
            return None
        r = self.batch.column("reward")[int(np.argmax(self.is_baseline))].as_py()
        return float(r or 0.0)

    @property
    def reward_errors(self) -> int:
        """Rows whose reward function failed (``reward_error`` set), baseline included."""
        col = self.batch.column("reward_error")
        return len(col) - col.null_count

    @property
    def response_tokens(self) -> int:
        """Response tokens over all rows, baseline included (what the generator produced)."""
        return len(self.batch.column("response_token_ids").flatten())

    @cached_property
    def response_lengths(self) -> np.ndarray:
        """``[num_samples]`` int32 response lengths of the trained samples."""
        return self._trained.column("response_token_ids").value_lengths().to_numpy(zero_copy_only=False)

    def prompt_token_ids(self) -> list[list[int]]:
        return self._trained.column("prompt_token_ids").to_pylist()

    def response_token_ids(self) -> list[list[int]]:
        return self._trained.column("response_token_ids").to_pylist()

    @cached_property
    def env_rewards(self) -> np.ndarray:
        """``[num_samples]`` float32 environment rewards, NaN where the environment gave none."""
        return pc.fill_null(self._trained.column("env_reward"), float("nan")).to_numpy(zero_copy_only=False)

    def episode_stats(self) -> dict[str, np.ndarray]:
        """``[num_samples]`` per-episode arrays: ``num_turns``, ``num_tool_calls``, ``tool_errors``
        (int32), ``tool_time_s`` (float32) and ``version_span`` (int64, newest minus oldest version
        of the sample's tokens: > 0 when a weight sync landed mid-episode); single-turn rows read
        1, 0, 0, 0 and their own span."""
        t = self._trained
        out = {name: t.column(name).to_numpy(zero_copy_only=False)
               for name in ("num_turns", "num_tool_calls", "tool_errors", "tool_time_s")}
        out["version_span"] = (t.column("policy_version_end").to_numpy(zero_copy_only=False)
                               - t.column("policy_version").to_numpy(zero_copy_only=False))
        return out

    @cached_property
    def trained_tokens(self) -> int:
        """Loss-mask-1 tokens of the trained samples (the model's own tokens, no observations)."""
        return int(pc.sum(self._trained.column("loss_mask").flatten()).as_py() or 0)

    def behaviour_logprobs(self, width: int | None = None) -> tuple[Tensor, Tensor]:
        """``([num_samples, T], [num_samples, T])`` float32: behaviour log-probs left-aligned on
        response tokens (0 past each end) and the response mask; ``T = width`` or the longest."""
        return behaviour_grid([self], width)


def behaviour_grid(groups: Sequence[ScoredGroup], width: int | None = None) -> tuple[Tensor, Tensor]:
    """The trained samples of ``groups``, in order, as ``[N, T]`` behaviour log-probs and mask
    (float32; ``T = width`` or the longest response, at least 1), built from Arrow buffers.
    The mask covers the whole response region (observation tokens included): the loss mask is
    :func:`token_grid` of ``loss_mask``."""
    import torch

    beh = token_grid(groups, "behaviour_logprobs", width, np.float32)
    lengths = _lengths(groups)
    mask = (np.arange(beh.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    return torch.from_numpy(beh), torch.from_numpy(mask)


def _lengths(groups: Sequence[ScoredGroup]) -> np.ndarray:
    return np.concatenate([g.response_lengths for g in groups]).astype(np.int64) if groups else np.zeros(0, np.int64)


def token_grid(groups: Sequence[ScoredGroup], column: str, width: int | None = None,
               dtype: type = np.float32, fill: float = 0) -> np.ndarray:
    """A per-token list column (``behaviour_logprobs``, ``loss_mask``, ``token_versions``) of the
    trained samples of ``groups`` as an ``[N, T]`` array left-aligned on response tokens, ``fill``
    past each end (``T = width`` or the longest response, at least 1), from Arrow buffers."""
    lengths = _lengths(groups)
    flat = [g._trained.column(column).flatten().to_numpy(zero_copy_only=False) for g in groups]
    values = np.concatenate(flat).astype(dtype, copy=False) if flat else np.zeros(0, dtype)
    T = max(1, int(lengths.max(initial=0))) if width is None else width
    if lengths.size and lengths.max() > T:
        raise ValueError(f"token_grid: width {T} < longest response {int(lengths.max())}")
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    grid: np.ndarray = np.full((len(lengths), T), fill, dtype)
    grid[rows, cols] = values
    return grid
