"""Trajectory transport: what the transport layer costs over raw ZeroMQ, and what the typed
group view saves on the learner side, in one run of this script.

A realistic group (``--n`` samples of a ``--prompt``-token prompt and ``--response``-token
replies, as a generator sends it) is encoded once. Throughput, between two processes:

* raw zmq bytes: a bare PUSH/PULL pair only receives the bytes (the floor);
* transport + ScoredGroup: :class:`asyncrl.transport.ZmqTransport` endpoints on both sides (the
  pipeline's limits), the receiver decodes and validates each group into a
  :class:`asyncrl.transport.items.ScoredGroup` (what the learner's I/O thread does).

Learner side, one process: behaviour log-probs of ``--count`` groups to an ``[N, T]`` tensor,
through Python lists (``to_pylist`` + ``torch.tensor`` per row, the path before the typed view)
and through :func:`asyncrl.transport.items.behaviour_grid` (from Arrow buffers)::

    python benchmarks/bench_transport.py [--smoke]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import table, write_results  # noqa: E402


def make_group(n: int, prompt: int, response: int) -> bytes:
    from asyncrl import schema

    rng = random.Random(0)
    p = [rng.randrange(50000) for _ in range(prompt)]
    rows = [{"prompt_id": 1, "group_id": 1, "sample_index": i, "split": "train", "data_source": "arith",
             "ground_truth": "12", "prompt_token_ids": p,
             "response_token_ids": [rng.randrange(50000) for _ in range(response)],
             "behaviour_logprobs": [-rng.random() for _ in range(response)], "response_text": "x" * response * 4,
             "finish_reason": "stop", "policy_version": 3, "policy_version_end": 3, "generator_index": 0,
             "gen_start_time": 0.0, "gen_end_time": 1.0, "reward": 1.0} for i in range(n)]
    return schema.encode_batch(schema.make_batch(rows))


def _sender(address: str, payload: bytes, count: int, raw: bool) -> None:
    if raw:
        import zmq

        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        s.connect(f"tcp://{address}")
        for _ in range(count):
            s.send(payload, copy=False)
        s.close(linger=-1)
        ctx.term()
        return
    from asyncrl.transport import ZmqTransport

    t = ZmqTransport(max_message_mb=64)
    push = t.push(address)
    for _ in range(count):
        push.send(payload)
    t.close(linger_s=60)


def _free_address() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _measure(payload: bytes, count: int, raw: bool) -> float:
    """Seconds to receive ``count - 1`` groups (the clock starts at the first)."""
    from asyncrl.transport import ZmqTransport
    from asyncrl.transport.items import ScoredGroup

    address = _free_address()
    t = ZmqTransport(max_message_mb=64)
    pull = t.pull(address)
    proc = mp.get_context("spawn").Process(target=_sender, args=(address, payload, count, raw))
    proc.start()
    pull.recv(None)  # the connection is up
    t0 = time.perf_counter()
    for _ in range(count - 1):
        data = pull.recv(None)
        if not raw:
            ScoredGroup.from_wire(data)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    proc.join()
    t.close(0)
    return dt


def _behaviour_per_group_us(payload: bytes, count: int) -> tuple[float, float]:
    """Microseconds per group: behaviour log-probs to a padded tensor via lists, then via Arrow."""
    import torch

    from asyncrl.transport.items import ScoredGroup, behaviour_grid

    groups = [ScoredGroup.from_wire(payload) for _ in range(count)]
    t0 = time.perf_counter()
    lists = [lp for g in groups for lp in g.batch.column("behaviour_logprobs").to_pylist()]
    T = max(len(lp) for lp in lists)
    beh = torch.zeros(len(lists), T)
    for i, lp in enumerate(lists):
        beh[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    t1 = time.perf_counter()
    grid, _ = behaviour_grid(groups)
    t2 = time.perf_counter()
    assert torch.equal(beh, grid)
    return (t1 - t0) / count * 1e6, (t2 - t1) / count * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    if args.smoke:
        args.count = 300
    payload = make_group(args.n, args.prompt, args.response)
    rows = []
    for name, raw in (("raw zmq bytes", True), ("transport + ScoredGroup (decode + validate)", False)):
        dt = _measure(payload, args.count, raw)
        per_s = (args.count - 1) / dt
        rows.append({"path": name, "groups_per_s": per_s, "MB_per_s": per_s * len(payload) / 2**20,
                     "us_per_group": 1e6 / per_s})
    ratio = rows[1]["groups_per_s"] / rows[0]["groups_per_s"]
    via_lists, via_arrow = _behaviour_per_group_us(payload, min(args.count, 1000))
    md = table(rows, ["path", "groups_per_s", "MB_per_s", "us_per_group"])
    md += (f"\n\ngroup: {args.n} samples x ({args.prompt} prompt + {args.response} response tokens) = "
           f"{len(payload) / 1024:.1f} KiB; {args.count} groups\n\n**transport / raw zmq throughput = {ratio:.2f}**"
           f"\n\nbehaviour log-probs to a tensor, per group: {via_lists:.0f} us via Python lists, "
           f"{via_arrow:.0f} us from Arrow buffers ({via_lists / via_arrow:.1f}x)")
    write_results(args.out, "transport", {"rows": rows, "ratio": ratio, "group_bytes": len(payload),
                                          "behaviour_us_lists": via_lists, "behaviour_us_arrow": via_arrow}, md)


if __name__ == "__main__":
    main()
