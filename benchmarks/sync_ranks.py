"""A learner of K ranks syncing its weights to one receiver that runs the generators' real
receive code (``asyncrl.weight_sync.receive_state``, without vLLM), timing each sync and
rank 0's peak extra memory. Used by ``bench_weight_sync.py --ranks`` and ``tests/test_stream_sync.py``::

    python benchmarks/sync_ranks.py receive --port P --out DIR &                 # the "generator"
    torchrun --nproc-per-node K benchmarks/sync_ranks.py learn MODEL --port P --out DIR

A sync is timed from the learner reading its weights to the receiver holding every bucket.
Peak extra memory is the process's RSS high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` before each sync) minus its RSS before that sync (``peak_extra``) and
before the first sync (``peak_over_start``: memory the allocator kept from earlier syncs
counts too): exact, no sampling, and it sees every allocator (torch's CPU tensors, gloo's
buffers), which tracemalloc does not.
``--gather`` syncs the way the learner did before streaming (FSDP2 ``get_model_state_dict``
of the whole model onto rank 0, then packing every bucket), for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncrl.weight_sync import SyncGroup, WeightSyncTimeout, connect_store, pack_state, receive_state  # noqa: E402
from learner.fsdp.model import broadcast_items, full_state_dict, load_policy  # noqa: E402
from learner.fsdp.ranks import RankChannel  # noqa: E402
from learner.fsdp.stream_sync import PackedSource, follow_sync, sync_params, sync_source  # noqa: E402

HOST = "127.0.0.1"


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(key + ":"))


def reset_peak() -> int:
    """Reset the RSS high-water mark to the current RSS; return that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_since(rss_before: int) -> int:
    return _status("VmHWM") - rss_before


class GatherSource(PackedSource):
    """The pre-streaming K-rank sync: the whole fp32 model gathered onto rank 0, then packed."""

    def __init__(self, model: torch.nn.Module, ranks: RankChannel) -> None:
        super().__init__(model)
        self.ranks = ranks

    def prepare(self, dtype: str, bucket_bytes: int, device: torch.device) -> list:
        self.ranks.send("sync")
        items = broadcast_items(self.model, full_state_dict(self.model))
        self.flats = pack_state(items, dtype, bucket_bytes, device, buffers=self.buffers)
        return [(name, dtype, list(t.shape)) for name, t in items]


class FailingGroup:
    """A group whose third broadcast fails, as when a generator dies mid-sync."""

    def __init__(self) -> None:
        self.sent = 0

    def broadcast_async(self, tensor: torch.Tensor) -> None:
        self.sent += 1
        if self.sent > 2:
            raise WeightSyncTimeout("simulated: a generator stopped receiving")

    def wait(self, work: object, what: str) -> None:
        pass


def learn(args: argparse.Namespace) -> None:
    model, _ = load_policy(args.model, "float32")
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks = RankChannel(timeout_s=300)
    if rank > 0:
        peaks = []
        while ranks.recv()[0] == "sync":
            rss = reset_peak()
            full_state_dict(model) if args.gather else follow_sync(model, args.dtype)
            peaks.append(peak_since(rss))
        full_state_dict(model) if args.save else None
        (args.out / f"rank{rank}.json").write_text(json.dumps({"peak_extra_bytes": peaks}))
        return
    store = connect_store(HOST, args.port, is_master=True, timeout_s=120, who="learner")
    source = GatherSource(model, ranks) if args.gather else sync_source(model, ranks)
    bucket, syncs, cpu = args.bucket_bytes, [], torch.device("cpu")
    metas = [(name, args.dtype, list(t.shape)) for name, t in sync_params(model)]
    store.set("sync_ranks/plan", json.dumps({"metas": metas, "bucket": bucket, "syncs": args.syncs}))
    group = SyncGroup(HOST, args.port, 0, 2, timeout_s=120, store=store)
    if args.fail_first:  # a failed attempt first: every rank must walk the stream again
        source.prepare(args.dtype, bucket, cpu)
        source.begin()
        try:
            source.send(FailingGroup(), -1)  # type: ignore[arg-type]
        except WeightSyncTimeout:
            source.abandon()
    start = reset_peak()
    for v in range(args.syncs):
        rss = reset_peak()
        t0 = time.perf_counter()
        source.prepare(args.dtype, bucket, cpu)
        source.begin()
        source.send(group, v)
        store.get(f"sync_ranks/received/{v}")
        syncs.append({"seconds": time.perf_counter() - t0, "peak_extra_bytes": peak_since(rss),
                      "peak_over_start_bytes": peak_since(start)})  # what earlier syncs left resident counts
    ranks.send("stop")
    params = [t for _, t in sync_params(model)]
    out = {"world_size": world, "syncs": syncs, "bucket_bytes": bucket, "dtype": args.dtype,
           "model_bytes_fp32": sum(t.numel() * 4 for t in params),
           "largest_param_bytes_fp32": max(t.numel() * 4 for t in params),
           "bytes_per_sync": sum(t.numel() for t in params)
           * torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()}
    if args.save:
        full = full_state_dict(model)
        torch.save({k: v.to(getattr(torch, args.dtype)) for k, v in full.items()}, args.out / "reference.pt")
    (args.out / "result.json").write_text(json.dumps(out))


def receive(args: argparse.Namespace) -> None:
    store = connect_store(HOST, args.port, is_master=False, timeout_s=120, who="receiver")
    plan = json.loads(store.get("sync_ranks/plan"))
    metas = [(n, d, s) for n, d, s in plan["metas"]]
    group = SyncGroup(HOST, args.port, 1, 2, timeout_s=120, store=store)
    buffers: list[torch.Tensor] = []
    for v in range(plan["syncs"]):
        got = {name: t.clone() if args.save else t for name, t in receive_state(group, metas, plan["bucket"],
                                                                                buffers=buffers)}
        store.set(f"sync_ranks/received/{v}", "1")
    if args.save:
        torch.save({"metas": metas, "bucket": plan["bucket"], "tensors": got}, args.out / "received.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=["learn", "receive"])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--syncs", type=int, default=3)
    ap.add_argument("--bucket-bytes", type=int, default=64 << 20)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--fail-first", action="store_true", help="fail the first attempt after two buckets, retry")
    ap.add_argument("--gather", action="store_true", help="the pre-streaming sync (full gather on rank 0)")
    ap.add_argument("--save", action="store_true", help="write what was received and the reference state")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    learn(args) if args.role == "learn" else receive(args)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
