"""Real ZeroMQ sockets: malformed or foreign messages are dropped and counted; workers go on."""

from __future__ import annotations

import threading
import time

import msgpack
import zmq

from asyncrl import messages, schema
from asyncrl.config import validate_config
from asyncrl.transport import make_transport
from learner.orchestrator.dispatcher import Dispatcher, Sampling, TokenizedPrompt
from learner.orchestrator.io import IOPump
from learner.orchestrator.state import OrchestratorState
from tests.conftest import free_port
from tests.test_wire import _row

GARBAGE = [b"", b"\x00" * 10, b"not arrow", msgpack.packb({"type": "hello"}),
           schema.encode_batch(schema.make_batch([_row()]))[:-30]]


def _cfg(**transport):
    ports = {"dispatch": f"127.0.0.1:{free_port()}", "trajectories": f"127.0.0.1:{free_port()}",
             "rewards": [f"127.0.0.1:{free_port()}"], "weight_sync": f"127.0.0.1:{free_port()}"}
    return validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "transport": {**ports, **transport},
                            "reward": {"function": "toy_digits", "timeout_s": 10}})


def _wait(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_reward_worker_survives_garbage_and_scores() -> None:
    from reward.worker import RewardWorker

    cfg = _cfg()
    worker = RewardWorker(cfg, 0)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.bind(f"tcp://{cfg.transport.trajectories}")
    src = ctx.socket(zmq.PUSH)
    src.connect(f"tcp://{cfg.transport.rewards[0]}")
    try:
        for g in GARBAGE:
            src.send(g)
        src.send(schema.encode_batch(schema.make_batch([_row(response_text="12ab")])))
        assert sink.poll(30000), "no scored batch came out"
        out = schema.decode_batch(sink.recv())
        assert out.column("reward").to_pylist() == [0.5]
        assert worker.drops.total == len(GARBAGE)
    finally:
        worker.running = False
        t.join(5)
        worker.close()
        ctx.destroy(linger=0)


def _learner_io(cfg, n_prompts: int) -> tuple[Dispatcher, IOPump]:
    prompts = [TokenizedPrompt(i, [1, 2], "arith", "3") for i in range(n_prompts)]
    d = Dispatcher(prompts, prompts_per_step=2, max_staleness=0, sampling=Sampling(2, 1.0, 4), seed=0)
    io = IOPump(cfg, OrchestratorState.for_run(cfg, d), make_transport(cfg.transport))
    io.start()
    return d, io


def _dealer(ctx: zmq.Context, cfg, identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(f"tcp://{cfg.transport.dispatch}")
    return sock


def test_learner_io_survives_garbage_and_dispatches() -> None:
    cfg = _cfg()
    d, io = _learner_io(cfg, 4)
    ctx = zmq.Context()
    gen = _dealer(ctx, cfg, b"gen-0")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://{cfg.transport.trajectories}")
    try:
        for g in GARBAGE:
            gen.send(g)
            push.send(g)
        gen.send(messages.encode("hello", generator=0, version=0))
        gen.send(messages.encode("credit", generator=0, version=0, count=5))
        assert not gen.poll(500)  # held: no prompt before it serves the learner's weights
        gen.send(messages.encode("synced", generator=0, version=0, seconds=0.1))
        assert gen.poll(10000)
        msg = messages.decode(gen.recv())
        assert msg["type"] == "prompts" and len(msg["items"]) == 2  # admission: (0+0+1)*2
        gid = msg["items"][0]["group_id"]
        push.send(schema.encode_batch(schema.make_batch([_row(group_id=gid, reward=1.0)])))
        push.send(schema.encode_batch(schema.make_batch([_row(group_id=gid, reward=1.0)])))  # duplicate
        push.send(schema.encode_batch(schema.make_batch([_row(group_id=999)])))  # foreign
        _wait(lambda: len(io.state.buffer) == 1 and io.state.counters.duplicates_dropped == 2)
        _wait(lambda: io.drops.total == 2 * len(GARBAGE))
    finally:
        io.stop()
        ctx.destroy(linger=0)


def test_silent_generator_is_declared_gone_and_told_to_rejoin() -> None:
    """A generator on another host goes silent: after liveness.generator_timeout_s its prompts are
    dispatched again; when it speaks again it is told to rejoin; a hello makes it a member again,
    held until it serves the current weights. Hellos under a wrong identity are dropped."""
    cfg = _cfg()
    cfg.liveness.generator_timeout_s = 1.0
    d, io = _learner_io(cfg, 8)
    ctx = zmq.Context()
    gen, impostor = _dealer(ctx, cfg, b"gen-0"), _dealer(ctx, cfg, b"gen-7")
    try:
        impostor.send(messages.encode("hello", generator=7, version=0))  # out of range: dropped
        gen.send(messages.encode("hello", generator=0, version=0))
        gen.send(messages.encode("credit", generator=0, version=0, count=5))
        gen.send(messages.encode("synced", generator=0, version=0, seconds=0.1))
        assert gen.poll(10000)
        first = messages.decode(gen.recv())["items"]
        assert len(first) == 2 and io.state.members() == {b"gen-0": 1}
        _wait(lambda: io.state.counters.generators_gone == 1, timeout=10)  # silent for more than 1 s
        assert io.state.members() == {} and d.counters.prompts_redispatched == 2 and d.held == {b"gen-0"}
        gen.send(messages.encode("heartbeat", generator=0, version=0))
        assert gen.poll(10000) and messages.decode(gen.recv())["type"] == "rejoin"
        gen.send(messages.encode("hello", generator=0, version=0))
        gen.send(messages.encode("credit", generator=0, version=0, count=5))
        _wait(lambda: io.state.members() == {b"gen-0": 2})
        assert not gen.poll(300)  # held again until it serves the current weights
        gen.send(messages.encode("synced", generator=0, version=0, seconds=0.1))
        assert gen.poll(10000)
        again = messages.decode(gen.recv())["items"]
        assert sorted(it["prompt_id"] for it in again) == sorted(it["prompt_id"] for it in first)
        assert all(it["attempt"] == 1 for it in again)
        assert io.drops.counts["control-identity"] == 1
    finally:
        io.stop()
        ctx.destroy(linger=0)
