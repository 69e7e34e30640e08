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


# ---- typed items over the same wire formats ---------------------------------------------------

def _item(**kw) -> dict:
    """A prompt item exactly as the dispatcher has sent it (validation items: no seed, no attempt)."""
    item = {"prompt_id": 5, "group_id": 9, "split": "val", "data_source": "arith", "ground_truth": "3",
            "prompt_token_ids": [1, 2], "n": 1, "temperature": 0, "max_tokens": 8}
    item.update(kw)
    return item


def test_prompt_items_round_trip_and_old_payloads_decode() -> None:
    from asyncrl.transport.items import PromptItem, decode_prompts, encode_prompts

    old = msgpack.packb({"type": "prompts", "items": [_item(), _item(split="train", seed=7, attempt=1, n=4)]})
    val, train = decode_prompts(messages.decode(old))
    assert (val.seed, val.attempt, val.greedy_baseline, val.temperature) == (None, 0, False, 0.0)
    assert (train.seed, train.attempt, train.n) == (7, 1, 4)
    remax = PromptItem(**{**_item(split="train", n=2), "temperature": 1.0}, seed=3, greedy_baseline=True)
    wire = messages.decode(encode_prompts([val, train, remax]))
    assert "seed" not in wire["items"][0] and "greedy_baseline" not in wire["items"][1]
    assert wire["items"][2]["greedy_baseline"] is True
    assert decode_prompts(wire) == [val, train, remax]


@pytest.mark.parametrize("bad", [
    {"greedy_baseline": 1}, {"greedy_baseline": "yes"}, {"prompt_token_ids": ["a"]}, {"prompt_token_ids": [True]},
    {"attempt": -1}, {"attempt": 1.5}, {"seed": -3}, {"n": 0}, {"max_tokens": None},
])
def test_prompt_items_reject_malformed(bad: dict) -> None:
    from asyncrl.transport.items import PromptItem

    with pytest.raises(messages.MessageError):
        messages.decode(msgpack.packb({"type": "prompts", "items": [_item(**bad)]}))
    with pytest.raises(messages.MessageError):
        PromptItem.from_wire(_item(**bad))


def test_scored_group_reads_todays_arrow_bytes() -> None:
    import torch

    from asyncrl.transport.items import ScoredGroup, behaviour_grid

    rows = [_row(reward=1.0, policy_version=4), _row(sample_index=1, response_token_ids=[6], behaviour_logprobs=[-2.0],
                                                  reward=None, reward_error="boom", policy_version=4),
            _row(sample_index=2, response_token_ids=[7, 8, 9], behaviour_logprobs=[-0.1, -0.2, -0.3], reward=0.5,
                 is_baseline=True, policy_version=4)]
    data = schema.encode_batch(schema.make_batch(rows))  # what a reward worker sends today
    g = ScoredGroup.from_wire(data)
    assert (g.group_id, g.prompt_id, g.policy_version, g.split, g.attempt) == (3, 7, 4, "train", 0)
    assert (g.num_rows, g.num_samples, g.reward_errors, g.response_tokens) == (3, 2, 1, 6)
    assert g.rewards.tolist() == [1.0, 0.0] and g.baseline_reward == 0.5
    assert g.is_baseline.tolist() == [False, False, True] and g.response_lengths.tolist() == [2, 1]
    assert g.response_token_ids() == [[4, 5], [6]] and g.prompt_token_ids() == [[1, 2, 3]] * 2
    beh, mask = g.behaviour_logprobs()
    assert torch.equal(beh, torch.tensor([[-0.5, -1.25], [-2.0, 0.0]]))
    assert torch.equal(mask, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    other = ScoredGroup.from_rows([_row(group_id=4, response_token_ids=[1, 2, 3], behaviour_logprobs=[-1.0] * 3)])
    beh, mask = behaviour_grid([g, other], width=4)
    assert beh.shape == (3, 4) and mask.sum().item() == 6 and beh[2, :3].tolist() == [-1.0] * 3
    rescored = ScoredGroup.from_wire(g.with_rewards([1, 2, 3], [None] * 3).to_wire())
    assert g.to_wire() == data and rescored.rewards.tolist() == [1, 2] and rescored.reward_errors == 0


@pytest.mark.parametrize("data", [b"", b"garbage", msgpack.packb({"type": "hello"})])
def test_scored_group_rejects_garbage(data: bytes) -> None:
    from asyncrl.transport.items import ScoredGroup

    with pytest.raises(schema.SchemaError):
        ScoredGroup.from_wire(data)


def test_batches_from_older_senders_decode() -> None:
    """Before ``is_baseline`` and ``attempt`` existed a group had 18 columns; it still decodes."""
    from asyncrl.transport.items import ScoredGroup

    full = schema.make_batch([_row(reward=1.0), _row(sample_index=1, reward=0.0)])
    old = full.select([n for n in full.schema.names if n not in ("is_baseline", "attempt")])
    g = ScoredGroup.from_wire(schema.encode_batch(old))
    assert g.batch.equals(full) and g.attempt == 0 and not g.is_baseline.any()
    foreign = old.append_column("x", pa.array([1, 2]))
    with pytest.raises(schema.SchemaError, match="schema mismatch"):
        schema.decode_batch(schema.encode_batch(foreign))
