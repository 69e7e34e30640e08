"""The learner → generators weight broadcast group and its bucketed protocol.

Rank 0 is the learner, ranks 1..N the generators' vLLM workers. The group is a
stand-alone torch.distributed process group (gloo on CPU, NCCL on GPU) built from a
TCPStore at ``transport.weight_sync``, so it never touches vLLM's own groups or the
learner's FSDP group. A sync is announced by a ``sync`` control message carrying
``tensors`` = [[name, dtype, shape], ...] in broadcast order; both sides derive the
same buckets from it with :func:`plan_buckets`, so only raw tensor bytes cross the
group. Every collective carries the group timeout, so a missing peer fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

TensorMeta = tuple[str, str, list[int]]  # name, dtype name, shape

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    return _DTYPES[name]


class SyncGroup:
    """A process group of ``world_size`` ranks over a TCPStore (rank 0 hosts the store)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, *, timeout_s: float,
                 backend: str = "gloo") -> None:
        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                   wait_for_workers=False, use_libuv=True)
        prefixed = dist.PrefixStore("asyncrl_weight_sync", self.store)
        if backend == "gloo":
            self.pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        elif backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(prefixed, rank, world_size)
        else:
            raise ValueError(f"unknown weight-sync backend {backend!r}")

    def broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([tensor], opts).wait()


def plan_buckets(metas: list[TensorMeta], bucket_bytes: int) -> list[list[int]]:
    """Group tensor indices into consecutive buckets of at most ``bucket_bytes`` (≥1 tensor each)."""
    buckets: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for i, (_, dt, shape) in enumerate(metas):
        nbytes = _numel(shape) * dtype_of(dt).itemsize
        if cur and size + nbytes > bucket_bytes:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += nbytes
    if cur:
        buckets.append(cur)
    return buckets


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def tensor_metas(named: Iterable[tuple[str, torch.Tensor]], dtype: str) -> list[TensorMeta]:
    return [(name, dtype, list(t.shape)) for name, t in named]


def send_state(group: SyncGroup, named: list[tuple[str, torch.Tensor]], dtype: str,
               bucket_bytes: int) -> int:
    """Broadcast tensors (cast to ``dtype``) bucket by bucket from rank 0; return bytes sent."""
    metas = tensor_metas(named, dtype)
    sent = 0
    for bucket in plan_buckets(metas, bucket_bytes):
        flat = torch.cat([named[i][1].detach().reshape(-1).to(group.device, dtype_of(dtype)) for i in bucket])
        group.broadcast(flat)
        sent += flat.numel() * flat.element_size()
    return sent


def receive_state(group: SyncGroup, metas: list[TensorMeta], bucket_bytes: int,
                  device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Receive the buckets of :func:`send_state`; yield (name, tensor) as each bucket lands."""
    for bucket in plan_buckets(metas, bucket_bytes):
        dt = dtype_of(metas[bucket[0]][1])
        sizes = [_numel(metas[i][2]) for i in bucket]
        flat = torch.empty(sum(sizes), dtype=dt, device=device)
        group.broadcast(flat)
        for i, piece in zip(bucket, torch.split(flat, sizes)):
            yield metas[i][0], piece.view(metas[i][2])


def default_backend() -> str:
    """NCCL when CUDA is present, gloo otherwise (learner and generators must agree)."""
    return "nccl" if torch.cuda.is_available() else "gloo"
