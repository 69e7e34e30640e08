"""Control messages (msgpack maps), validated on receipt; never pickled.

Generator → learner (DEALER → ROUTER on ``transport.dispatch``):
  hello   {generator, version}            a generator joined (or rejoined)
  credit  {generator, version, count}     it can take ``count`` more prompts
  synced  {generator, version, seconds}   it now serves weights ``version``
  heartbeat {generator, version}          still alive (every rollout.heartbeat_s)
  sync_failed {generator, version, why}   a sync did not apply or verify: it is paused, send again
Learner → generator:
  prompts {items: [PromptItem...]}        prompts to generate (PROMPT_ITEM_FIELDS + _OPTIONAL;
                                          typed: asyncrl.transport.items.PromptItem)
  sync    {version, tensors, bucket_bytes, epoch, members, tp, ns}
                                          weights follow on the sync group of ``epoch``:
                                          rank 0 the learner, then each member's ``tp`` vLLM
                                          workers in member order (weight_sync.group_layout);
                                          its store keys live under the secret namespace ``ns``
  digests {version, epoch, digests}       SHA-256 of every bucket just broadcast (CURVE runs):
                                          weights serve only when the received bytes match
  rejoin  {}                              you were declared dead: say hello again
  ack     {}                              answer to a heartbeat: the learner is alive
  stop    {}                              shut down cleanly
"""

from __future__ import annotations

from typing import Any

import msgpack

# type name -> required field -> accepted python types
MESSAGE_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"generator": (int,), "version": (int,)},
    "credit": {"generator": (int,), "version": (int,), "count": (int,)},
    "synced": {"generator": (int,), "version": (int,), "seconds": (float, int)},
    "heartbeat": {"generator": (int,), "version": (int,)},
    "prompts": {"items": (list,)},
    "sync": {"version": (int,), "tensors": (list,), "bucket_bytes": (int,), "epoch": (int,), "members": (list,),
             "tp": (int,), "ns": (str,)},
    "digests": {"version": (int,), "epoch": (int,), "digests": (list,)},
    "sync_failed": {"generator": (int,), "version": (int,), "why": (str,)},
    "rejoin": {},
    "ack": {},
    "stop": {},
}

PROMPT_ITEM_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt_id": (int,), "group_id": (int,), "split": (str,), "data_source": (str,),
    "ground_truth": (str,), "prompt_token_ids": (list,), "n": (int,),
    "temperature": (float, int), "max_tokens": (int,),
}


# optional prompt item fields (absent in older payloads) -> (accepted types, default)
PROMPT_ITEM_OPTIONAL: dict[str, tuple[tuple[type, ...], Any]] = {
    "seed": ((int, type(None)), None),  # the dispatcher's per-prompt sampling seed (train items)
    "attempt": ((int,), 0),             # 0 for a prompt's first dispatch, +1 for each re-dispatch
    "greedy_baseline": ((bool,), False),  # ReMax: also generate one greedy reply
}


class MessageError(ValueError):
    """A control message that is not valid msgpack or not one of MESSAGE_FIELDS."""


def encode(kind: str, **fields: Any) -> bytes:
    """Encode a control message after checking it against MESSAGE_FIELDS."""
    msg = {"type": kind, **fields}
    _check(msg)
    return msgpack.packb(msg, use_bin_type=True)


def decode(data: bytes, max_bytes: int = 64 << 20) -> dict[str, Any]:
    """Decode and validate; raise MessageError on anything malformed or foreign."""
    if len(data) > max_bytes:
        raise MessageError(f"message of {len(data)} bytes exceeds limit {max_bytes}")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise MessageError(f"not msgpack: {type(e).__name__}: {e}") from None
    _check(msg)
    return msg


def _check(msg: Any) -> None:
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise MessageError("message is not a map with a string 'type'")
    spec = MESSAGE_FIELDS.get(msg["type"])
    if spec is None:
        raise MessageError(f"unknown message type {msg['type']!r}")
    _check_fields(msg, spec, msg["type"])
    if msg["type"] == "prompts":
        for item in msg["items"]:
            check_prompt_item(item)
    if msg["type"] == "sync" and not all(isinstance(m, str) for m in msg["members"]):
        raise MessageError("sync.members: expected a list of generator names")


def check_prompt_item(item: Any) -> None:
    """Validate one ``prompts.items`` entry (required and optional fields); raise MessageError."""
    if not isinstance(item, dict):
        raise MessageError("prompts.items entries must be maps")
    _check_fields(item, PROMPT_ITEM_FIELDS, "prompts.items")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in item["prompt_token_ids"]):
        raise MessageError("prompts.items.prompt_token_ids: expected a list of ints")
    if item["n"] < 1 or item["max_tokens"] < 1:
        raise MessageError("prompts.items: n and max_tokens must be >= 1")
    for key, (types, default) in PROMPT_ITEM_OPTIONAL.items():
        val = item.get(key, default)
        if not isinstance(val, types) or (isinstance(val, bool) and bool not in types):
            raise MessageError(f"prompts.items.{key}: expected {'/'.join(t.__name__ for t in types)}")
    seed, attempt = item.get("seed"), item.get("attempt", 0)
    if seed is not None and not 0 <= seed < 2**63:
        raise MessageError("prompts.items.seed: expected a non-negative int")
    if attempt < 0:
        raise MessageError("prompts.items.attempt: expected a non-negative int")


def _check_fields(msg: dict, spec: dict[str, tuple[type, ...]], where: str) -> None:
    for key, types in spec.items():
        val = msg.get(key)
        if not isinstance(val, types) or isinstance(val, bool):
            raise MessageError(f"{where}.{key}: expected {'/'.join(t.__name__ for t in types)}")
