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
==================  =====================  ==================================================

Batches from senders older than ``is_baseline`` and ``attempt`` decode with their defaults (False,
0). Typed access: :class:`asyncrl.transport.items.ScoredGroup`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

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
])

_DEFAULTS = {"is_baseline": False, "attempt": 0}


class SchemaError(ValueError):
    """A record batch that does not follow TRAJECTORY_SCHEMA."""


def make_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Build a validated record batch from row dicts (missing nullable fields → null)."""
    cols = {f.name: [r.get(f.name, _DEFAULTS.get(f.name)) for r in rows] for f in TRAJECTORY_SCHEMA}
    batch = pa.RecordBatch.from_pydict(cols, schema=TRAJECTORY_SCHEMA)
    validate_batch(batch)
    return batch


def validate_batch(batch: pa.RecordBatch) -> None:
    """Check schema and per-row invariants; raise SchemaError naming the problem."""
    if not batch.schema.equals(TRAJECTORY_SCHEMA, check_metadata=False):
        raise SchemaError(f"schema mismatch: got {batch.schema.names}")
    if batch.num_rows == 0:
        raise SchemaError("empty trajectory batch")
    for name in TRAJECTORY_SCHEMA.names:
        if not TRAJECTORY_SCHEMA.field(name).nullable and batch.column(name).null_count:
            raise SchemaError(f"column {name} has nulls")
    resp = batch.column("response_token_ids").value_lengths()
    lps = batch.column("behaviour_logprobs").value_lengths()
    if not resp.equals(lps):
        raise SchemaError("behaviour_logprobs and response_token_ids lengths differ")
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
    """A batch from an older sender, without the columns added since (``is_baseline``,
    ``attempt``), gets them with their defaults; anything else is left for validation to judge."""
    missing = [f for f in TRAJECTORY_SCHEMA if f.name not in batch.schema.names]
    if not missing or any(f.name not in _DEFAULTS for f in missing):
        return batch
    cols = {name: batch.column(name) for name in batch.schema.names}
    for f in missing:
        cols[f.name] = pa.array([_DEFAULTS[f.name]] * batch.num_rows, f.type)
    if set(cols) != set(TRAJECTORY_SCHEMA.names):
        return batch  # foreign columns too: the schema check names them
    return pa.RecordBatch.from_arrays([cols[n] for n in TRAJECTORY_SCHEMA.names], schema=TRAJECTORY_SCHEMA)


def with_rewards(batch: pa.RecordBatch, rewards: list[float], errors: list[str | None]) -> pa.RecordBatch:
    """Return the batch with reward and reward_error columns filled."""
    cols = list(batch.columns)
    cols[TRAJECTORY_SCHEMA.get_field_index("reward")] = pa.array(rewards, pa.float32())
    cols[TRAJECTORY_SCHEMA.get_field_index("reward_error")] = pa.array(errors, pa.string())
    return pa.RecordBatch.from_arrays(cols, schema=TRAJECTORY_SCHEMA)
