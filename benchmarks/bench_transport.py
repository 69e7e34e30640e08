"""Trajectory transport: Arrow record batches over ZeroMQ vs a raw ZeroMQ send of the same
bytes, between two processes, in one run of this script.

A realistic group (``--n`` samples of a ``--prompt``-token prompt and ``--response``-token
replies, as a generator sends it) is encoded with :func:`asyncrl.schema.encode_batch`; the
sender pushes it ``--count`` times through the same socket set-up the pipeline uses; the
receiver decodes and validates each (what the learner's I/O thread does). The raw run sends
the same bytes and only receives them. Reports groups/s, MB/s and the ratio::

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


def _sender(addr: str, payload: bytes, count: int) -> None:
    import zmq

    from asyncrl.transport import make_socket

    ctx = zmq.Context()
    s = make_socket(ctx, zmq.PUSH, max_message_mb=64)
    s.connect(addr)
    for _ in range(count):
        s.send(payload, copy=False)
    s.close(linger=-1)
    ctx.term()


def _measure(payload: bytes, count: int, decode: bool) -> float:
    import zmq

    from asyncrl import schema
    from asyncrl.transport import make_socket

    ctx = zmq.Context()
    s = make_socket(ctx, zmq.PULL, max_message_mb=64)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    proc = mp.get_context("spawn").Process(target=_sender, args=(f"tcp://127.0.0.1:{port}", payload, count))
    proc.start()
    first = s.recv()  # the clock starts once the connection is up
    if decode:
        schema.decode_batch(first)
    t0 = time.perf_counter()
    for _ in range(count - 1):
        data = s.recv(copy=False)
        if decode:
            schema.decode_batch(data.buffer)
    dt = time.perf_counter() - t0
    proc.join()
    s.close()
    ctx.term()
    return dt


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
    for name, decode in (("raw zmq bytes", False), ("arrow + zmq (decode + validate)", True)):
        dt = _measure(payload, args.count, decode)
        per_s = (args.count - 1) / dt
        rows.append({"path": name, "groups_per_s": per_s, "MB_per_s": per_s * len(payload) / 2**20,
                     "us_per_group": 1e6 / per_s})
    ratio = rows[1]["groups_per_s"] / rows[0]["groups_per_s"]
    md = table(rows, ["path", "groups_per_s", "MB_per_s", "us_per_group"])
    md += (f"\n\ngroup: {args.n} samples x ({args.prompt} prompt + {args.response} response tokens) = "
           f"{len(payload) / 1024:.1f} KiB; {args.count} groups\n\n**arrow+zmq / raw zmq throughput = {ratio:.2f}**")
    write_results(args.out, "transport", {"rows": rows, "ratio": ratio, "group_bytes": len(payload)}, md)


if __name__ == "__main__":
    main()
