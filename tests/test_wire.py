"""The Arrow trajectory schema and msgpack control messages reject anything malformed."""

from __future__ import annotations

import msgpack
import pyarrow as pa
import pytest

from asyncrl import messages, schema


def _row(**kw) -> dict:
    row = {"prompt_id": 7, "group_id": 3, "sample_index": 0, "split": "train", "data_source": "arith",
           "ground_truth": "12", "prompt_token_ids": [1, 2, 3], "response_token_ids": [4, 5],
           "behaviour_logprobs": [-0.5, -1.25], "response_text": "ab", "finish_reason": "stop",
           "policy_version": 2, "policy_version_end": 3, "generator_index": 0, "gen_start_time": 1.0,
           "gen_end_time": 2.0}
    row.update(kw)
    return row


def test_arrow_round_trip() -> None:
    batch = schema.make_batch([_row(), _row(sample_index=1)])
    out = schema.decode_batch(schema.encode_batch(batch))
    assert out.equals(batch)
    scored = schema.with_rewards(out, [1.0, 0.0], [None, "boom"])
    back = schema.decode_batch(schema.encode_batch(scored))
    assert back.column("reward").to_pylist() == [1.0, 0.0]
    assert back.column("reward_error").to_pylist() == [None, "boom"]


@pytest.mark.parametrize("data", [b"", b"garbage", msgpack.packb({"type": "hello"}), b"\xff" * 100])
def test_arrow_rejects_garbage(data: bytes) -> None:
    with pytest.raises(schema.SchemaError):
        schema.decode_batch(data)


def test_arrow_rejects_wrong_schema_and_invariants() -> None:
    other = pa.RecordBatch.from_pydict({"x": [1]})
    with pytest.raises(schema.SchemaError, match="schema mismatch"):
        schema.decode_batch(schema.encode_batch(other))
    with pytest.raises(schema.SchemaError, match="lengths differ"):
        schema.make_batch([_row(behaviour_logprobs=[-1.0])])
    with pytest.raises(schema.SchemaError, match="one group"):
        schema.make_batch([_row(), _row(group_id=4)])
    full = schema.make_batch([_row()])
    truncated = schema.encode_batch(full)[:-40]
    with pytest.raises(schema.SchemaError):
        schema.decode_batch(truncated)


def test_messages_round_trip() -> None:
    data = messages.encode("credit", generator=1, version=4, count=2)
    assert messages.decode(data) == {"type": "credit", "generator": 1, "version": 4, "count": 2}


@pytest.mark.parametrize("data", [
    b"\xc1", b"", msgpack.packb([1, 2]), msgpack.packb({"type": "nope"}),
    msgpack.packb({"type": "credit", "generator": 1, "version": "4", "count": 1}),
    msgpack.packb({"type": "prompts", "items": [{"prompt_id": 1}]}),
    msgpack.packb({"type": "hello", "generator": True, "version": 0}),
])
def test_messages_reject_malformed(data: bytes) -> None:
    with pytest.raises(messages.MessageError):
        messages.decode(data)


def test_messages_size_limit() -> None:
    with pytest.raises(messages.MessageError, match="exceeds"):
        messages.decode(b"\x00" * 100, max_bytes=10)
