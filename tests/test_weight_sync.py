"""Weight-sync group: buckets round-trip, and every wait fails in time naming who is missing."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import pytest
import torch

from asyncrl.weight_sync import (
    SyncGroup,
    WeightSyncTimeout,
    connect_store,
    plan_buckets,
    receive_state,
    send_state,
    tensor_metas,
)
from tests.conftest import free_port


def _generator(port: int, rank: int, world: int, mode: str, q: mp.Queue) -> None:
    q.put("ready")  # imports done: joining takes milliseconds from here
    try:
        g = SyncGroup("127.0.0.1", port, rank, world, timeout_s=30.0)
        if mode == "receive":
            metas = [("a", "bfloat16", [3, 5]), ("b", "bfloat16", [7])]
            got = {k: v.float().tolist() for k, v in receive_state(g, metas, bucket_bytes=32)}
            q.put(("ok", got))
        elif mode == "idle":  # joins, then never takes part in a broadcast
            time.sleep(8)
            q.put(("ok", None))
    except Exception as e:  # noqa: BLE001 - reported to the test
        q.put(("error", f"{type(e).__name__}: {e}"))


def _start(*args) -> tuple[mp.Process, mp.Queue]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_generator, args=(*args, q), daemon=True)
    p.start()
    assert q.get(timeout=120) == "ready"
    time.sleep(0.5)
    return p, q


def test_buckets_round_trip_cast_to_generator_dtype() -> None:
    port = free_port()
    p, q = _start(port, 1, 2, "receive")
    g = SyncGroup("127.0.0.1", port, 0, 2, timeout_s=30.0)
    named = [("a", torch.arange(15, dtype=torch.float32).view(3, 5)), ("b", torch.full((7,), 0.5))]
    assert len(plan_buckets(tensor_metas(named, "bfloat16"), 32)) == 2
    send_state(g, named, "bfloat16", bucket_bytes=32, version=1)
    status, got = q.get(timeout=30)
    p.join(10)
    assert status == "ok", got
    assert got["a"] == torch.arange(15, dtype=torch.float32).view(3, 5).tolist() and got["b"] == [0.5] * 7


def test_rendezvous_timeout_names_the_missing_generator() -> None:
    port = free_port()
    p, q = _start(port, 1, 3, "idle")  # generator 0 joins; generator 1 (rank 2) never comes
    t0 = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match=r"learner waited 3s; generator 1 did not join"):
        SyncGroup("127.0.0.1", port, 0, 3, timeout_s=3.0)
    assert time.monotonic() - t0 < 30
    p.kill()


def test_stalled_broadcast_names_the_other_side() -> None:
    port = free_port()
    p, q = _start(port, 1, 2, "idle")
    g = SyncGroup("127.0.0.1", port, 0, 2, timeout_s=3.0)
    t0 = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match=r"weight sync v7 bucket 1/1 did not complete within 3s: "
                                                 r"a generator stopped receiving"):
        send_state(g, [("w", torch.ones(1000))], "float32", bucket_bytes=1 << 20, version=7)
    assert time.monotonic() - t0 < 30
    p.kill()


def test_generator_without_learner_fails_in_time() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match="generator 0 could not reach the learner's store"):
        SyncGroup("127.0.0.1", port, 1, 2, timeout_s=2.0)
    assert time.monotonic() - t0 < 30


def _member(port: int, epochs: list[tuple[int, int, int]], q: mp.Queue, go: Any = None) -> None:
    """Join each (epoch, rank, world) group in turn (after ``go`` is set, if given); receive
    broadcasts in it until one fails."""
    store = connect_store("127.0.0.1", port, is_master=False, timeout_s=30.0, who="generator")
    q.put("ready")
    if go is not None:
        go.wait(120)
    for epoch, rank, world in epochs:
        try:
            g = SyncGroup("127.0.0.1", port, rank, world, timeout_s=30.0, epoch=epoch, store=store)
            t = torch.zeros(1 << 20)
            for _ in range(1 if epoch else 4):
                g.broadcast(t, f"epoch {epoch}")
                q.put((epoch, "ok", float(t[0])))
        except WeightSyncTimeout as e:
            q.put((epoch, "error", str(e)))


def test_group_is_reformed_after_a_member_dies_and_survivors_stop_waiting_at_once() -> None:
    """A generator killed mid-run: the learner's broadcast fails fast, abandoning the group frees
    the survivor at once (gloo alone would block it until the timeout), and the next epoch's group
    of the survivor plus a restarted generator works."""
    port = free_port()
    store = connect_store("127.0.0.1", port, is_master=True, timeout_s=30.0, who="learner")
    ctx = mp.get_context("spawn")
    q_a, q_b, q_c, go = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    a = ctx.Process(target=_member, args=(port, [(0, 1, 3), (1, 1, 3)], q_a), daemon=True)
    b = ctx.Process(target=_member, args=(port, [(0, 2, 3)], q_b), daemon=True)
    # the generator that replaces b: its process (and imports) start now, it joins once b is gone
    c = ctx.Process(target=_member, args=(port, [(1, 2, 3)], q_c, go), daemon=True)
    a.start(), b.start(), c.start()
    assert q_a.get(timeout=120) == "ready" and q_b.get(timeout=120) == "ready" and q_c.get(timeout=120) == "ready"
    g0 = SyncGroup("127.0.0.1", port, 0, 3, timeout_s=30.0, epoch=0, store=store)
    g0.broadcast(torch.full((1 << 20,), 1.0))
    assert q_a.get(timeout=30) == (0, "ok", 1.0) and q_b.get(timeout=30) == (0, "ok", 1.0)
    b.kill()
    b.join(10)
    t0 = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match="a generator stopped receiving"):
        for _ in range(3):  # the first send may still fit in the dead peer's socket buffer
            g0.broadcast(torch.full((1 << 20,), 2.0))
    g0.abandon()
    got = q_a.get(timeout=30)
    while got[1] == "ok":  # broadcasts that reached it before the failure
        got = q_a.get(timeout=30)
    assert got[0] == 0 and got[1] == "error"  # gloo's own error or the abandoned group, not a hang
    assert time.monotonic() - t0 < 10  # not the 30 s timeout
    go.set()  # the restarted generator joins the next epoch
    g1 = SyncGroup("127.0.0.1", port, 0, 3, timeout_s=30.0, epoch=1, store=store, join_timeout_s=30.0)
    g1.broadcast(torch.full((1 << 20,), 3.0))
    assert q_a.get(timeout=30) == (1, "ok", 3.0) and q_c.get(timeout=30) == (1, "ok", 3.0)
    for p in (a, c):
        p.join(10)


def test_join_wait_is_cancelled_when_membership_changes() -> None:
    port = free_port()
    store = connect_store("127.0.0.1", port, is_master=True, timeout_s=30.0, who="learner")
    t0 = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match="membership changed while waiting for generator 0 to join"):
        SyncGroup("127.0.0.1", port, 0, 2, timeout_s=30.0, epoch=4, store=store, join_timeout_s=30.0,
                  cancelled=lambda: time.monotonic() - t0 > 0.5)
    assert time.monotonic() - t0 < 5
