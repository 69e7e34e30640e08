"""Admission control + oldest-first batching keep every trained sample within max_staleness."""

from __future__ import annotations

import random

import pytest

from asyncrl.transport.items import ScoredGroup
from learner.orchestrator.buffer import GroupBuffer
from learner.orchestrator.dispatcher import Dispatcher, Sampling, TokenizedPrompt
from tests.test_wire import _row

PROMPTS = [TokenizedPrompt(i, [1, 2, i], "arith", str(i)) for i in range(10)]


def _dispatcher(B: int = 2, s: int = 1) -> Dispatcher:
    return Dispatcher(PROMPTS, prompts_per_step=B, max_staleness=s, sampling=Sampling(4, 1.0, 8), seed=0)


def test_admission_bound() -> None:
    d = _dispatcher(B=2, s=1)
    d.update(b"g", version=0, credit=10)
    items = d.take(b"g")
    assert len(items) == 4  # (0 + 1 + 1) * 2
    assert d.take(b"g") == []
    d.update(b"g", version=1)
    assert len(d.take(b"g")) == 2
    assert len({it.group_id for it in items}) == 4


def test_synchronous_when_staleness_zero() -> None:
    d = _dispatcher(B=3, s=0)
    d.update(b"g", version=0, credit=100)
    assert len(d.take(b"g")) == 3


def test_validation_bypasses_admission_and_credit_counts() -> None:
    d = _dispatcher(B=1, s=0)
    gids = d.add_validation(PROMPTS[:3], max_tokens=5)
    d.update(b"g", version=0, credit=2)
    items = d.take(b"g")
    assert [it.split for it in items] == ["val", "val"]
    assert items[0].temperature == 0.0 and items[0].n == 1 and items[0].group_id == gids[0]


def test_epochs_cover_every_prompt_once() -> None:
    d = _dispatcher(B=100, s=0)
    d.update(b"g", version=0, credit=20)
    ids = [it.prompt_id for it in d.take(b"g")]
    assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:]) == list(range(10))


def _group(version: int, gid: int) -> ScoredGroup:
    return ScoredGroup.from_rows([_row(group_id=gid, policy_version=version)])


def test_buffer_waits_for_older_inflight() -> None:
    buf = GroupBuffer()
    buf.add(_group(2, 0))
    buf.add(_group(1, 1))
    assert buf.select(2, min_inflight_bound=0) is None  # an older group is still out
    got = buf.select(2, min_inflight_bound=None)
    assert [g.policy_version for g in got] == [1, 2]


@pytest.mark.parametrize("s,B,gens,seed", [(0, 2, 1, 0), (1, 3, 2, 1), (2, 4, 3, 2), (3, 2, 2, 3)])
def test_simulated_staleness_never_exceeds_bound(s: int, B: int, gens: int, seed: int) -> None:
    """Random completion order and lagging generators: the bound must still hold."""
    rng = random.Random(seed)
    d = Dispatcher(PROMPTS, prompts_per_step=B, max_staleness=s, sampling=Sampling(2, 1.0, 4), seed=seed)
    buf, version = GroupBuffer(), 0
    gen_version = {f"g{i}".encode(): 0 for i in range(gens)}
    running: list[tuple[int, int]] = []  # (group_id, version at start)
    for g in gen_version:
        d.update(g, 0, credit=5)
    for _ in range(3000):
        for g in gen_version:
            for it in d.take(g):
                running.append((it.group_id, gen_version[g]))
        if running and rng.random() < 0.6:
            gid, v = running.pop(rng.randrange(len(running)))
            d.arrived(gid)
            buf.add(_group(v, gid))
            g = rng.choice(list(gen_version))
            d.update(g, gen_version[g], credit=1)
        batch = buf.select(B, d.min_inflight_bound())
        if batch:
            assert all(version - b.policy_version <= s for b in batch)
            version += 1
            for g in gen_version:  # sync: every generator takes the new weights (sync_every=1)
                if rng.random() < 0.9 or s == 0:
                    gen_version[g] = version
                    d.update(g, version)
    assert version > 20


def test_discarded_groups_free_admission_slots() -> None:
    d = _dispatcher(B=2, s=0)
    d.update(b"g", version=0, credit=10)
    assert len(d.take(b"g")) == 2
    assert d.take(b"g") == []
    d.discard(2)  # dynamic sampling dropped both: two more may go out at the same version
    assert len(d.take(b"g")) == 2


def test_state_and_restore_redispatch_outstanding_prompts_first() -> None:
    d = _dispatcher(B=2, s=1)
    d.update(b"g", version=0, credit=10)
    items = d.take(b"g")  # 4 groups out
    assert all(isinstance(it.seed, int) for it in items)
    d.arrived(items[0].group_id)
    d.settle([items[0].group_id, items[1].group_id])  # two trained, two outstanding
    state = d.state()
    assert state["pending"] == [[it.prompt_id, it.seed, 0] for it in items[2:]]

    fresh = _dispatcher(B=2, s=1)
    fresh.restore(state, version=1)
    fresh.hold_generator(b"h")  # a generator says hello: held until it serves the resumed weights
    fresh.update(b"h", version=1, credit=10)
    assert fresh.take(b"h") == []
    fresh.release_generator(b"h")
    again = fresh.take(b"h")
    assert [[it.prompt_id, it.seed, it.attempt] for it in again[:2]] == state["pending"]
    # then the data continues where the first dispatcher stopped, with fresh group ids
    cont = d.take(b"g") or (d.update(b"g", version=1), d.take(b"g"))[1]
    assert [it.prompt_id for it in again[2:]] == [it.prompt_id for it in cont][:len(again) - 2]
    assert min(it.group_id for it in again) >= state["next_group_id"]


def test_seeds_depend_on_prompt_and_epoch_only() -> None:
    from learner.orchestrator.dispatcher import prompt_seed

    assert prompt_seed(0, 0, 5) == prompt_seed(0, 0, 5)
    assert len({prompt_seed(0, 0, 5), prompt_seed(0, 1, 5), prompt_seed(1, 0, 5), prompt_seed(0, 0, 6)}) == 4


def test_lost_groups_are_dispatched_again_with_the_next_attempt() -> None:
    d = _dispatcher(B=2, s=0)
    d.update(b"g", version=0, credit=10)
    first = d.take(b"g")
    assert len(first) == 2 and d.take(b"g") == []  # admission: one step's worth
    assert d.of_generator(b"g") == [it.group_id for it in first]
    assert d.expired(3600) == [] and len(d.expired(-1)) == 2
    assert d.lose([first[0].group_id]) == 1
    again = d.take(b"g")  # the lost slot is free again; the same prompt and seed come first
    assert [(it.prompt_id, it.seed, it.attempt) for it in again] == [
        (first[0].prompt_id, first[0].seed, 1)]
    assert d.arrived(first[0].group_id) is None  # the old group arriving late is a duplicate
    assert d.counters.prompts_redispatched == 1 and d.counters.samples_lost == 4


def test_held_generator_gets_nothing_and_returns_its_validation_prompts() -> None:
    d = _dispatcher(B=2, s=1)
    d.update(b"g", version=0, credit=4)
    gids = d.add_validation(d.prompts[:3], max_tokens=8)
    items = d.take(b"g")
    assert [it.group_id for it in items[:3]] == gids and len(items) == 4
    d.val_arrived(gids[0])
    lost = d.hold_generator(b"g")  # it died: one train group and two validation prompts were out
    assert lost == [items[3].group_id]
    assert [it.group_id for it in d.val_queue] == gids[1:]
    d.update(b"g", version=0, credit=4)
    assert d.take(b"g") == []  # held until it serves the current weights
    d.release_generator(b"g")
    d.lose(lost)
    again = d.take(b"g")
    assert [it.group_id for it in again[:2]] == gids[1:]
    assert again[2].prompt_id == items[3].prompt_id and again[2].attempt == 1
