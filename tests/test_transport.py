"""The transport contract, run against both backends (ZeroMQ sockets and in-process channels)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq

from asyncrl import messages
from asyncrl.transport import DropCounter, Transport, TransportError, ZmqTransport, make_transport
from asyncrl.transport.inproc import Hub, InprocTransport
from asyncrl.transport.items import PromptItem, ScoredGroup, encode_prompts
from tests.conftest import free_port

Pair = tuple[Transport, Transport, Callable[[], str]]


@pytest.fixture(params=["zmq", "inproc"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Two transports (as two processes would hold) and a fresh-address maker; limit 1 MiB."""
    if request.param == "zmq":
        a, b = ZmqTransport(max_message_mb=1), ZmqTransport(max_message_mb=1)
    else:
        hub = Hub()
        a, b = InprocTransport(max_message_mb=1, hub=hub), InprocTransport(max_message_mb=1, hub=hub)
    yield a, b, lambda: f"127.0.0.1:{free_port()}"
    a.close(0)
    b.close(0)


def _until(cond: Callable[[], object], timeout: float = 10.0) -> object:
    end = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < end, "condition not reached"
    return got


def test_push_pull_and_timeout(pair: Pair) -> None:
    a, b, addr = pair
    where = addr()
    pull = a.pull(where)
    push = b.push(where)
    t0 = time.monotonic()
    assert pull.recv(0.1) is None and time.monotonic() - t0 >= 0.09
    for i in range(3):
        push.send(b"m%d" % i)
    assert [pull.recv(5) for _ in range(3)] == [b"m0", b"m1", b"m2"]
    assert pull.recv(0) is None


def test_push_to_several_receivers_round_robin(pair: Pair) -> None:
    a, b, addr = pair
    w1, w2 = addr(), addr()
    p1, p2 = a.pull(w1), a.pull(w2)
    push = b.push([w1, w2])
    _until(lambda: (push.send(b"probe"), p1.recv(0.05))[1])  # ZeroMQ: both connections up
    _until(lambda: (push.send(b"probe"), p2.recv(0.05))[1])
    while p1.recv(0.1) or p2.recv(0.1):
        pass
    for i in range(4):
        push.send(b"%d" % i)
    got = [p1.recv(5), p1.recv(5), p2.recv(5), p2.recv(5)]
    assert sorted(got) == [b"0", b"1", b"2", b"3"]  # type: ignore[type-var]


def test_connect_before_bind(pair: Pair) -> None:
    a, b, addr = pair
    where = addr()
    push = b.push(where)
    push.send(b"early")
    assert a.pull(where).recv(5) == b"early"


def test_oversized_message_is_dropped_and_receiver_goes_on(pair: Pair) -> None:
    a, b, addr = pair
    where = addr()
    pull, push = a.pull(where), b.push(where)
    push.send(b"x" * (2 << 20))  # over the 1 MiB limit
    # ZeroMQ resets the connection on an oversized frame; later messages come through once it reconnects
    got = _until(lambda: (push.send(b"small"), pull.recv(0.2))[1])
    assert got == b"small"


def test_server_routes_to_named_clients(pair: Pair) -> None:
    a, b, addr = pair
    where = addr()
    server = a.server(where)
    c1, c2 = b.client(where, b"gen-0"), b.client(where, b"gen-1")
    c1.send(b"hello from 0")
    c2.send(b"hello from 1")
    got = sorted([server.recv(5), server.recv(5)])  # type: ignore[type-var]
    assert got == [(b"gen-0", b"hello from 0"), (b"gen-1", b"hello from 1")]
    assert server.send(b"gen-1", b"for 1") and server.send(b"gen-0", b"for 0")
    assert c1.recv(5) == b"for 0" and c2.recv(5) == b"for 1"
    assert c1.recv(0.05) is None
    assert server.send(b"gen-9", b"nobody") is False  # never connected
    c2.close()  # ZeroMQ notices the disconnect a moment later (sleep: a full pipe would block the send)
    _until(lambda: time.sleep(0.05) or server.send(b"gen-1", b"gone?") is False)


def test_same_identity_takes_over(pair: Pair) -> None:
    a, b, addr = pair
    where = addr()
    server = a.server(where)
    old = b.client(where, b"gen-0")
    old.send(b"first life")
    assert server.recv(5) == (b"gen-0", b"first life")
    new = b.client(where, b"gen-0")  # a restarted generator, the old one not closed yet
    new.send(b"second life")
    assert server.recv(5) == (b"gen-0", b"second life")
    assert server.send(b"gen-0", b"to the new one")
    assert new.recv(5) == b"to the new one"


def test_poll_returns_ready_endpoints(pair: Pair) -> None:
    a, b, addr = pair
    w1, w2 = addr(), addr()
    pull, server = a.pull(w1), a.server(w2)
    push, client = b.push(w1), b.client(w2, b"c")
    t0 = time.monotonic()
    assert a.poll([pull, server], 0.1) == [] and time.monotonic() - t0 >= 0.09
    client.send(b"ctl")
    assert _until(lambda: a.poll([pull, server], 0.5)) == [server]
    push.send(b"data")
    assert _until(lambda: len(a.poll([pull, server], 0.5)) == 2)
    assert server.recv(0) == (b"c", b"ctl") and pull.recv(0) == b"data"
    assert a.poll([pull, server], 0) == []
    server.send(b"c", b"reply")
    assert b.poll([client], 5) == [client]


def test_asyncio_side(pair: Pair) -> None:
    a, b, addr = pair
    w1, w2 = addr(), addr()
    pull, server = a.pull(w1), a.server(w2)

    async def generator() -> list[bytes | None]:
        out, control = b.apush(w1), b.aclient(w2, b"gen-0")
        await control.send(b"hello")
        await out.send(b"group")
        got = [await control.recv(0.05)]  # nothing yet
        while (reply := await control.recv(0.05)) is None:  # the loop keeps running meanwhile
            if (req := server.recv(0)) is not None:
                server.send(req[0], b"prompts:" + req[1])
        return got + [reply]

    assert asyncio.run(generator()) == [None, b"prompts:hello"]
    assert pull.recv(5) == b"group"


def test_bind_twice_is_refused(pair: Pair) -> None:
    a, b, addr = pair
    where = addr()
    a.pull(where)
    with pytest.raises(TransportError, match="cannot bind"):
        b.pull(where)


def test_make_transport_picks_backend() -> None:
    from asyncrl.config import TransportSection

    cfg = TransportSection(max_message_mb=3)
    t = make_transport(cfg)
    assert isinstance(t, ZmqTransport) and t.max_bytes == 3 << 20
    assert isinstance(make_transport(cfg, backend="inproc"), InprocTransport)
    with pytest.raises(ValueError, match="transport.backend"):
        make_transport(cfg, backend="carrier-pigeon")
    t.close(0)


def test_zmq_server_counts_malformed_frames() -> None:
    t = ZmqTransport()
    where = f"127.0.0.1:{free_port()}"
    drops = DropCounter("test")
    server = t.server(where, drops=drops)
    ctx = zmq.Context()
    try:
        raw = ctx.socket(zmq.DEALER)
        raw.connect(f"tcp://{where}")
        raw.send_multipart([b"two", b"frames"])
        raw.send(b"fine")
        got = _until(lambda: server.recv(0.5))
        assert got[1] == b"fine" and drops.counts["control-frames"] == 1  # type: ignore[index]
    finally:
        t.close(0)
        ctx.destroy(linger=0)


def test_zmq_curve_admits_only_authorized_clients(tmp_path: Path) -> None:
    from asyncrl.curve import create_keys

    keys = create_keys(tmp_path / "keys")
    server_side, good, plain = ZmqTransport(curve_dir=keys), ZmqTransport(curve_dir=keys), ZmqTransport()
    where = f"127.0.0.1:{free_port()}"
    try:
        pull = server_side.pull(where)
        assert server_side.auth is not None  # the first bind started the ZAP handler
        plain.push(where).send(b"plain")
        good.push(where).send(b"good")
        got = []
        while (m := pull.recv(1)) is not None:
            got.append(m)
        assert got == [b"good"]
    finally:
        for t in (server_side, good, plain):
            t.close(0)


# ---- the ported workers, on either backend ------------------------------------------------------

def _cfg(addr: Callable[[], str], run_dir: Path) -> Any:
    from asyncrl.config import validate_config

    ports = {"dispatch": addr(), "trajectories": addr(), "rewards": [addr()]}
    return validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "run": {"dir": str(run_dir)},
                            "transport": ports, "reward": {"function": "toy_digits", "timeout_s": 10}})


def test_reward_worker_on_either_backend(pair: Pair, tmp_path: Path) -> None:
    from reward.worker import RewardWorker
    from tests.test_wire import _row

    a, b, addr = pair
    cfg = _cfg(addr, tmp_path)
    worker = RewardWorker(cfg, 0, transport=a)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        sink, src = b.pull(cfg.transport.trajectories), b.push(cfg.transport.rewards[0])
        src.send(b"not arrow")
        src.send(ScoredGroup.from_rows([_row(response_text="12ab")]).to_wire())
        data = sink.recv(30)
        assert data is not None and ScoredGroup.from_wire(data).rewards.tolist() == [0.5]
        assert worker.drops.counts["trajectory"] == 1
    finally:
        worker.running = False
        t.join(5)
        worker.close()


class _FakeEngine:
    """Stands in for vLLM's AsyncLLM in this unit test only (tests/test_e2e.py runs the real one)."""

    async def generate(self, prompt: dict, params: Any, request_id: str) -> AsyncIterator[Any]:
        lp = [{7: SimpleNamespace(logprob=-0.5)}, {8: SimpleNamespace(logprob=-1.5)}]
        comps = [SimpleNamespace(index=i, token_ids=[7, 8][:1 + i % 2], logprobs=lp, text="12", finish_reason="stop")
                 for i in range(params.n)]
        yield SimpleNamespace(finished=True, outputs=comps)

    def shutdown(self, timeout: float | None = None) -> None:
        pass


def test_generator_on_either_backend(pair: Pair, tmp_path: Path) -> None:
    """hello + credit, prompts in (ReMax baseline included), one group out per prompt and a credit
    back, rejoin answered by a new hello, stop ends the loop."""
    from rollout.worker import Generator

    a, b, addr = pair
    cfg = _cfg(addr, tmp_path)
    server, pull = b.server(cfg.transport.dispatch), b.pull(cfg.transport.rewards[0])

    def control(kind: str) -> dict:
        while True:
            got = server.recv(30)
            assert got is not None and got[0] == b"gen-0", f"no {kind} from the generator"
            if (msg := messages.decode(got[1]))["type"] == kind:
                return msg

    async def scenario() -> None:
        gen = Generator(cfg, 0)
        gen.engine = _FakeEngine()
        await gen.start(transport=a)
        loop = asyncio.create_task(gen.run())
        try:
            await asyncio.to_thread(control, "hello")
            assert (await asyncio.to_thread(control, "credit"))["count"] == cfg.rollout.max_inflight_prompts
            item = PromptItem(prompt_id=4, group_id=11, split="train", data_source="arith", ground_truth="12",
                              prompt_token_ids=[1, 2], n=2, temperature=1.0, max_tokens=4, seed=3, attempt=1,
                              greedy_baseline=True)
            server.send(b"gen-0", encode_prompts([item]))
            data = await asyncio.to_thread(pull.recv, 30)
            assert data is not None
            group = ScoredGroup.from_wire(data)
            assert (group.group_id, group.attempt, group.num_rows, group.num_samples) == (11, 1, 3, 2)
            assert group.batch.column("sample_index").to_pylist() == [0, 1, 2] and group.is_baseline[-1]
            assert (await asyncio.to_thread(control, "credit"))["count"] == 1
            server.send(b"gen-0", messages.encode("rejoin"))
            await asyncio.to_thread(control, "hello")
            server.send(b"gen-0", messages.encode("stop"))
            await asyncio.wait_for(loop, 10)
        finally:
            loop.cancel()
            await gen.close()

    asyncio.run(scenario())
