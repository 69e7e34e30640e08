"""The weight path under CURVE: a secret store namespace and per-bucket digests.

The real path (vLLM workers hashing what they received, the learner's digests over the CURVE
channel, a foreign process on another host attacking the store) runs in test_multihost.py; here
the pieces: digests of what was sent equal digests of what was received, bytes from anyone else
are rejected before they serve, and a group under another namespace never meets this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import torch

from asyncrl.config import validate_config
from asyncrl.weight_sync import (
    DigestingGroup,
    SyncGroup,
    WeightSyncTimeout,
    connect_store,
    receive_state,
    send_state,
    tensor_metas,
)
from rollout.weights import WeightReceiver, WeightsRejected
from tests.conftest import free_port

NAMED = [("a", torch.arange(15, dtype=torch.float32).view(3, 5)), ("b", torch.full((7,), 0.5))]


def _pair(port: int, namespace: str) -> tuple[SyncGroup, SyncGroup]:
    store = connect_store("127.0.0.1", port, is_master=True, timeout_s=20, who="learner")
    groups: dict[int, SyncGroup] = {}
    t = threading.Thread(target=lambda: groups.setdefault(1, SyncGroup("127.0.0.1", port, 1, 2, timeout_s=20,
                                                                        namespace=namespace)))
    t.start()
    groups[0] = SyncGroup("127.0.0.1", port, 0, 2, timeout_s=20, store=store, namespace=namespace)
    t.join()
    return groups[0], groups[1]


def _exchange(sender: SyncGroup, receiver: SyncGroup, named) -> tuple[list[str], list[str]]:
    metas = tensor_metas(NAMED, "bfloat16")
    got: list[str] = []
    t = threading.Thread(target=lambda: list(receive_state(receiver, metas, 32, digests=got)))
    t.start()
    digesting = DigestingGroup(sender)
    send_state(digesting, named, "bfloat16", bucket_bytes=32)
    t.join()
    return digesting.digests, got


def _receiver(expected: list[str]) -> WeightReceiver:
    cfg = validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "transport": {"curve_dir": "k"}})

    async def await_message(kind, match, timeout_s):
        msg = {"type": "digests", "version": 3, "epoch": 0, "digests": expected}
        assert kind == "digests" and match(msg)
        return msg

    async def send(*a, **k):
        pass

    return WeightReceiver(cfg, None, "gen-0", 0, send, await_message)


def test_digests_match_for_the_learners_bytes_and_reject_others() -> None:
    sender, receiver = _pair(free_port(), "secret")
    sent, got = _exchange(sender, receiver, NAMED)
    assert len(sent) == 2 and sent == got
    wr = _receiver(sent)
    asyncio.run(wr._verify({"version": 3, "epoch": 0}, [got, got]))  # both TP workers: accepted
    # the same group, other bytes (a foreign sender): every receiver sees other digests and refuses
    forged = [(n, t + 1) for n, t in NAMED]
    _, foreign = _exchange(sender, receiver, forged)
    assert foreign != sent
    with pytest.raises(WeightsRejected, match=r"bucket\(s\) \[1, 2\] on TP worker 1 do not match"):
        asyncio.run(wr._verify({"version": 3, "epoch": 0}, [sent, foreign]))
    assert wr.rejected == 1


def test_group_in_another_namespace_never_meets_this_one() -> None:
    """A process without the run's secret cannot register as a member of its group."""
    port = free_port()
    store = connect_store("127.0.0.1", port, is_master=True, timeout_s=20, who="learner")
    intruder = threading.Thread(target=lambda: _try_join(port))
    intruder.start()
    with pytest.raises(WeightSyncTimeout, match="generator 0 did not join"):
        SyncGroup("127.0.0.1", port, 0, 2, timeout_s=2, store=store, namespace="the-run-secret")
    intruder.join()


def _try_join(port: int) -> None:
    with contextlib.suppress(WeightSyncTimeout):
        SyncGroup("127.0.0.1", port, 1, 2, timeout_s=3, namespace="guess")


def test_ring_of_two_buffers_receives_every_bucket() -> None:
    """With ring=2 a receiver holds two bucket buffers, not one per bucket, and still gets every tensor."""
    sender, receiver = _pair(free_port(), "ring")
    named = [(f"t{i}", torch.arange(i, i + 6 + i, dtype=torch.float32)) for i in range(7)]
    metas = tensor_metas(named, "float32")
    got: dict[str, list[float]] = {}
    buffers: list[torch.Tensor] = []
    digests: list[str] = []

    def receive() -> None:
        for name, t in receive_state(receiver, metas, 40, buffers=buffers, digests=digests, ring=2):
            got[name] = t.tolist()  # copied before asking for the next, as the in-place apply does

    t = threading.Thread(target=receive)
    t.start()
    digesting = DigestingGroup(sender)
    send_state(digesting, named, "float32", bucket_bytes=40)
    t.join()
    assert got == {n: v.tolist() for n, v in named}
    assert len(buffers) == 2 and len(digests) == len(digesting.digests) > 2 and digests == digesting.digests
