"""The trajectory wire format: one Arrow schema, defined and documented here only.

A generator sends one record batch per prompt group (``n`` rows, one per sample; plus one
``is_baseline`` row for ReMax) in Arrow IPC stream format; the reward worker fills ``reward``/``reward_error`` and
forwards the same batch to the learner. Field by field:

==================  =====================  ==================================================
field               type                   meaning
==================  =====================  ==================================================
prompt_id           int64                  stable id of the dataset prompt
group_id            int64                  id of this dispatch of the prompt (unique per run)
sample_index        int32                  0..n-1 within the group
split               string                 "train" or "val" (greedy validation)
data_source         string                 picks the reward function (veRL semantics)
ground_truth        string                 reference answer for the reward function
prompt_token_ids    list<int32>            prompt tokens (chat template applied)
response_token_ids  list<int32>            sampled tokens (EOS included when emitted)
behaviour_logprobs  list<float32>          log-prob of each sampled token under the
                                           distribution actually sampled from (processed)
response_text       string                 detokenized response
finish_reason       string                 "stop", "length", ... from vLLM
policy_version      int64                  generator weights version when the sample started
policy_version_end  int64                  version when it finished (differs if a sync landed)
generator_index     int32                  which generator produced it
gen_start_time      float64                unix seconds, request start
gen_end_time        float64                unix seconds, request end
reward              float32 (nullable)     filled by the reward worker
reward_error        string (nullable)      set when the reward function failed (reward = 0)
is_baseline         bool                   a greedy baseline sample (ReMax), scored, never trained
attempt             int32                  0 for a prompt's first dispatch, +1 for each re-dispatch
loss_mask           list<int8>             per response token: 1 = the model's token (trained),
                                           0 = an observation token (tool output, user message)
token_versions      list<int32>            per response token: the generator's weights version
                                           when the token arrived; -1 on observation tokens
turn_starts         list<int32>            index in the response of each model turn's first token
env_reward          float32 (nullable)     the environment's episode reward (sum of turn rewards
                                           and the final reward); null: the reward function scores
num_turns           int32                  model turns in the episode
num_tool_calls      int32                  tool calls made, well-formed or not (the environment's
                                           info["calls"], else what the parser found)
tool_errors         int32                  calls that failed: malformed, unknown tool, the tool
                                           raised, or the episode's tool time ran out
tool_time_s         float32                wall seconds spent in the environment's step (tools)
tool_calls          string                 JSON list of {turn, name, arguments, ok, seconds, error}
==================  =====================  ==================================================

Multi-turn episodes (rollout/episode.py) fill the response region with the model's turns and the
observations between them, in order, so ``response_token_ids``/``behaviour_logprobs`` cover both
(observation log-probs are 0.0 and never trained), ``response_text`` is the whole transcript, and
``policy_version``/``policy_version_end`` are the oldest/newest version of the model's tokens.

Batches from older senders decode with defaults derived per row: ``is_baseline`` False, ``attempt``
0, ``loss_mask`` all 1, ``token_versions`` all ``policy_version``, ``turn_starts`` [0],
``env_reward`` null, one turn and no tool calls. Typed access:
:class:`asyncrl.transport.items.ScoredGroup`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TRAJECTORY_SCHEMA = pa.schema([
    pa.field("prompt_id", pa.int64(), nullable=False),
    pa.field("group_id", pa.int64(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("data_source", pa.string(), nullable=False),
    pa.field("ground_truth", pa.string(), nullable=False),
    pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("behaviour_logprobs", pa.list_(pa.float32()), nullable=False),
    pa.field("response_text", pa.string(), nullable=False),
    pa.field("finish_reason", pa.string(), nullable=False),
    pa.field("policy_version", pa.int64(), nullable=False),
    pa.field("policy_version_end", pa.int64(), nullable=False),
    pa.field("generator_index", pa.int32(), nullable=False),
    pa.field("gen_start_time", pa.float64(), nullable=False),
    pa.field("gen_end_time", pa.float64(), nullable=False),
    pa.field("reward", pa.float32(), nullable=True),
    pa.field("reward_error", pa.string(), nullable=True),
    pa.field("is_baseline", pa.bool_(), nullable=False),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),
    pa.field("token_versions", pa.list_(pa.int32()), nullable=False),
    pa.field("turn_starts", pa.list_(pa.int32()), nullable=False),
    pa.field("env_reward", pa.float32(), nullable=True),
    pa.field("num_turns", pa.int32(), nullable=False),
    pa.field("num_tool_calls", pa.int32(), nullable=False),
    pa.field("tool_errors", pa.int32(), nullable=False),
    pa.field("tool_time_s", pa.float32(), nullable=False),
    pa.field("tool_calls", pa.string(), nullable=False),
])

_NOT_NULL = [i for i, f in enumerate(TRAJECTORY_SCHEMA) if not f.nullable]

# Columns added after the first senders, with the value a row without them has.
_DEFAULTS: dict[str, Any] = {"is_baseline": False, "attempt": 0, "env_reward": None, "num_turns": 1,
                             "num_tool_calls": 0, "tool_errors": 0, "tool_time_s": 0.0, "tool_calls": "[]"}
# Per-token columns derived from each row: loss_mask all 1, token_versions = policy_version, turn_starts [0].
_PER_ROW = ("loss_mask", "token_versions", "turn_starts")


class SchemaError(ValueError):
    """A record batch that does not follow TRAJECTORY_SCHEMA."""


def make_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Build a validated record batch from row dicts (missing nullable fields → null; missing
    added columns → their defaults, the per-token ones derived per row as for older senders)."""
    derive = [name for name in _PER_ROW if any(name not in r for r in rows)]
    cols: dict[str, pa.Array] = {}
    for f in TRAJECTORY_SCHEMA:
        if f.name not in derive:
            cols[f.name] = pa.array([r.get(f.name, _DEFAULTS.get(f.name)) for r in rows], f.type)
    if derive:  # a row that has its own value keeps it
        derived = _derived(cols["response_token_ids"], cols["policy_version"])
        for name in derive:
            if all(name not in r for r in rows):
                cols[name] = derived[name]
            else:
                own = [r.get(name) for r in rows]
                cols[name] = pa.array([d if o is None else o for o, d in zip(own, derived[name].to_pylist())],
                                      TRAJECTORY_SCHEMA.field(name).type)
    batch = pa.RecordBatch.from_arrays([cols[n] for n in TRAJECTORY_SCHEMA.names], schema=TRAJECTORY_SCHEMA)
    validate_batch(batch)
    return batch


def _derived(responses: pa.Array, versions: pa.Array) -> dict[str, pa.Array]:
    """The per-token columns of single-turn rows, from Arrow buffers: ``loss_mask`` all 1,
    ``token_versions`` all the row's ``policy_version``, ``turn_starts`` [0]."""
    lengths = responses.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pa.int32())
    total = int(lengths.sum())
    ones = pa.array(np.ones(total, np.int8), pa.int8())
    per_token = np.repeat(versions.to_numpy(zero_copy_only=False).astype(np.int32), lengths)
    starts = pa.ListArray.from_arrays(pa.array(np.arange(len(lengths) + 1, dtype=np.int32), pa.int32()),
                                      pa.array(np.zeros(len(lengths), np.int32), pa.int32()))
    return {"loss_mask": pa.ListArray.from_arrays(offsets, ones),
            "token_versions": pa.ListArray.from_arrays(offsets, pa.array(per_token, pa.int32())),
            "turn_starts": starts}


def validate_batch(batch: pa.RecordBatch) -> None:
    """Check schema and per-row invariants; raise SchemaError naming the problem."""
    if not batch.schema.equals(TRAJECTORY_SCHEMA, check_metadata=False):
        raise SchemaError(f"schema mismatch: got {batch.schema.names}")
    if batch.num_rows == 0:
        raise SchemaError("empty trajectory batch")
    for i in _NOT_NULL:
        if batch.column(i).null_count:
            raise SchemaError(f"column {TRAJECTORY_SCHEMA.names[i]} has nulls")
    resp = batch.column("response_token_ids").value_lengths()
    for name in ("behaviour_logprobs", "loss_mask", "token_versions"):
        if not resp.equals(batch.column(name).value_lengths()):
            raise SchemaError(f"{name} and response_token_ids lengths differ")
    if pc.min(batch.column("turn_starts").value_lengths()).as_py() < 1:
        raise SchemaError("turn_starts must list at least one turn per row")
    if len(set(batch.column("group_id").to_pylist())) != 1:
        raise SchemaError("a trajectory batch must hold exactly one group")


def encode_batch(batch: pa.RecordBatch) -> bytes:
    """Arrow IPC stream bytes of one record batch."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_batch(data: bytes) -> pa.RecordBatch:
    """Parse and validate Arrow IPC stream bytes; raise SchemaError on anything malformed."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        batches = list(reader)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise SchemaError(f"not an Arrow IPC stream: {e}") from None
    if len(batches) != 1:
        raise SchemaError(f"expected 1 record batch, got {len(batches)}")
    batch = _upgrade(batches[0])
    validate_batch(batch)
    return batch


def _upgrade(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch from an older sender, without columns added since (``is_baseline``, ``attempt``, the
    multi-turn ones), gets them with their defaults (per-token ones derived per row); anything else
    is left for validation to judge."""
    present = set(batch.schema.names)
    missing = [f for f in TRAJECTORY_SCHEMA if f.name not in present]
    if not missing or any(f.name not in _DEFAULTS and f.name not in _PER_ROW for f in missing):
        return batch
    cols = {name: batch.column(name) for name in batch.schema.names}
    if any(f.name in _PER_ROW for f in missing):
        try:
            derived = _derived(cols["response_token_ids"], cols["policy_version"])
        except (KeyError, AttributeError, TypeError, ValueError, pa.ArrowException):
            return batch  # not our columns: the schema check names them
    for f in missing:
        cols[f.name] = derived[f.name] if f.name in _PER_ROW else pa.array([_DEFAULTS[f.name]] * batch.num_rows,
                                                                             f.type)
    if set(cols) != set(TRAJECTORY_SCHEMA.names):
        return batch  # foreign columns too: the schema check names them
    return pa.RecordBatch.from_arrays([cols[n] for n in TRAJECTORY_SCHEMA.names], schema=TRAJECTORY_SCHEMA)


def with_rewards(batch: pa.RecordBatch, rewards: list[float], errors: list[str | None]) -> pa.RecordBatch:
    """Return the batch with reward and reward_error columns filled."""
    cols = list(batch.columns)
    cols[TRAJECTORY_SCHEMA.get_field_index("reward")] = pa.array(rewards, pa.float32())
    cols[TRAJECTORY_SCHEMA.get_field_index("reward_error")] = pa.array(errors, pa.string())
    return pa.RecordBatch.from_arrays(cols, schema=TRAJECTORY_SCHEMA)
