"""Hostile messages for a live run (tests/test_hostile.py): malformed, truncated, wrong-schema,
foreign and oversized, sent round-robin to the three sockets a run binds."""

from __future__ import annotations

import random
import threading
import time

import msgpack
import zmq

from asyncrl import schema
from tests.test_wire import _row


def _garbage(rng: random.Random) -> list[bytes]:
    valid = schema.encode_batch(schema.make_batch([_row(group_id=10**9)]))  # well-formed but foreign
    wrong = schema.encode_batch(schema.make_batch([_row()]).drop_columns(["reward"]))  # wrong schema
    return [b"", rng.randbytes(rng.randint(1, 5000)), valid[: rng.randint(1, len(valid) - 1)], wrong,
            msgpack.packb({"type": "credit", "version": "x"}), msgpack.packb([1, 2, 3]),
            msgpack.packb({"type": "prompts", "items": [{"prompt_id": "no"}]}), valid]


class Fuzzer(threading.Thread):
    """Sends ``count`` hostile messages round-robin to the three bound sockets (``addrs``:
    dispatch, trajectories, rewards), then ``oversized`` messages above transport.max_message_mb."""

    def __init__(self, addrs: dict[str, str], count: int, oversized: int, pause_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.addrs, self.count, self.oversized, self.pause_s = addrs, count, oversized, pause_s
        self.sent = {k: 0 for k in ("dispatch", "trajectories", "rewards")}
        self.sent_foreign = dict(self.sent)

    def run(self) -> None:
        rng = random.Random(0)
        ctx = zmq.Context()
        socks = {"dispatch": ctx.socket(zmq.DEALER), "trajectories": ctx.socket(zmq.PUSH),
                 "rewards": ctx.socket(zmq.PUSH)}
        for name, s in socks.items():
            s.setsockopt(zmq.LINGER, 2000)
            s.connect(f"tcp://{self.addrs[name]}")
        pool = _garbage(rng)
        for i in range(self.count):
            name = list(socks)[i % 3]
            msg = pool[i % len(pool)] if i % len(pool) else rng.randbytes(rng.randint(1, 3000))
            if name == "dispatch" and msg is pool[-1]:
                msg = b"\x92\x01"  # a valid Arrow batch is not a control message: send junk msgpack instead
            socks[name].send(msg)
            self.sent[name] += 1
            self.sent_foreign[name] += msg is pool[-1]
            time.sleep(self.pause_s)
        for _ in range(self.oversized):  # beyond transport.max_message_mb: libzmq drops it unread
            socks["trajectories"].send(b"\x00" * (3 << 20))
        time.sleep(1)
        ctx.destroy(linger=1000)
