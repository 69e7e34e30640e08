"""The learner → generators weight broadcast group and its bucketed protocol.

Rank 0 is the learner, ranks 1..N the generators' vLLM workers. The group is a
stand-alone torch.distributed process group (gloo on CPU, NCCL on GPU) built from a
TCPStore at ``transport.weight_sync``, so it never touches vLLM's own groups or the
learner's FSDP group. A sync is announced by a ``sync`` control message carrying
``tensors`` = [[name, dtype, shape], ...] in broadcast order; both sides derive the
same buckets from it with :func:`plan_buckets`, so only raw tensor bytes cross the
group: each bucket is one flat tensor in the generators' dtype, filled by a single
casting copy. The learner packs every bucket before announcing the sync, so generators
pause only for the broadcast and their in-place reload.

Every wait has a timeout and fails with :class:`WeightSyncTimeout` naming the side that
did not arrive: the ranks missing at the rendezvous, or the bucket a broadcast stalled on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

TensorMeta = tuple[str, str, list[int]]  # name, dtype name, shape

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightSyncTimeout(RuntimeError):
    """A weight-sync rendezvous or broadcast did not complete in time; says who is missing."""


def dtype_of(name: str) -> torch.dtype:
    return _DTYPES[name]


def _role(rank: int) -> str:
    return "learner" if rank == 0 else f"generator {rank - 1}"


class SyncGroup:
    """A process group of ``world_size`` ranks over a TCPStore (rank 0 hosts the store)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, *, timeout_s: float,
                 backend: str = "gloo") -> None:
        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.where = f"weight-sync group at {host}:{port}"
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        try:
            self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                       wait_for_workers=False, use_libuv=True)
        except (RuntimeError, dist.DistStoreError) as e:
            raise WeightSyncTimeout(f"{self.where}: {_role(rank)} could not reach the learner's store within "
                                    f"{timeout_s:.0f}s ({e})") from None
        self.store.set(f"asyncrl_joined/{rank}", "1")
        prefixed = dist.PrefixStore("asyncrl_weight_sync", self.store)
        try:
            if backend == "gloo":
                self.pg = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
            elif backend == "nccl":
                self.pg = dist.ProcessGroupNCCL(prefixed, rank, world_size)
            else:
                raise ValueError(f"unknown weight-sync backend {backend!r}")
        except (RuntimeError, dist.DistError) as e:
            raise WeightSyncTimeout(f"{self.where}: {_role(rank)} waited {timeout_s:.0f}s; "
                                    f"{self._missing()} did not join ({type(e).__name__})") from None

    def _missing(self) -> str:
        missing = []
        for r in range(self.world_size):
            try:
                if not self.store.check([f"asyncrl_joined/{r}"]):
                    missing.append(_role(r))
            except Exception:  # noqa: BLE001 - the store itself is gone: the learner is
                return "the learner (its store is unreachable)"
        return ", ".join(missing) if missing else "a peer (all registered, the rendezvous failed)"

    def broadcast_async(self, tensor: torch.Tensor) -> dist.Work:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([tensor], opts)

    def wait(self, work: dist.Work, what: str) -> None:
        """Wait for ``work``; on a timeout name the side that stopped answering."""
        try:
            ok = work.wait(timedelta(seconds=self.timeout_s))
        except (RuntimeError, dist.DistError) as e:
            raise self._stalled(what, e) from None
        if ok is False:
            raise self._stalled(what, None)

    def _stalled(self, what: str, e: BaseException | None) -> WeightSyncTimeout:
        other = "a generator stopped receiving" if self.rank == 0 else "the learner stopped sending"
        detail = f" ({type(e).__name__}: {str(e)[:200]})" if e is not None else ""
        return WeightSyncTimeout(f"{self.where}: {what} did not complete within {self.timeout_s:.0f}s: "
                                 f"{other}{detail}")

    def broadcast(self, tensor: torch.Tensor, what: str = "broadcast") -> None:
        self.wait(self.broadcast_async(tensor), what)


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


def _pack(named: list[tuple[str, torch.Tensor]], bucket: list[int], dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """One flat tensor of the bucket's tensors, cast while copied (no per-tensor temporaries)."""
    flat = torch.empty(sum(named[i][1].numel() for i in bucket), dtype=dtype, device=device)
    offset = 0
    for i in bucket:
        t = named[i][1].detach().reshape(-1)
        flat[offset:offset + t.numel()].copy_(t)
        offset += t.numel()
    return flat


def pack_state(named: list[tuple[str, torch.Tensor]], dtype: str, bucket_bytes: int,
               device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The buckets of :func:`plan_buckets` as flat tensors in ``dtype``, ready to broadcast.

    Packing before the ``sync`` message goes out keeps the casts out of the generators' pause.
    """
    buckets = plan_buckets(tensor_metas(named, dtype), bucket_bytes)
    return [_pack(named, bucket, dtype_of(dtype), torch.device(device)) for bucket in buckets]


def broadcast_packed(group: SyncGroup, flats: list[torch.Tensor], version: int | None = None) -> int:
    """Broadcast packed buckets back to back from rank 0; return bytes sent."""
    tag = f"weight sync v{version}" if version is not None else "weight sync"
    works = [(group.broadcast_async(f), f"{tag} bucket {k + 1}/{len(flats)}") for k, f in enumerate(flats)]
    for work, what in works:
        group.wait(work, what)
    return sum(f.numel() * f.element_size() for f in flats)


def send_state(group: SyncGroup, named: list[tuple[str, torch.Tensor]], dtype: str, bucket_bytes: int,
               version: int | None = None) -> int:
    """Pack and broadcast tensors (cast to ``dtype``) from rank 0; return bytes sent."""
    return broadcast_packed(group, pack_state(named, dtype, bucket_bytes, group.device), version)


def receive_state(group: SyncGroup, metas: list[TensorMeta], bucket_bytes: int,
                  device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Receive the buckets of :func:`send_state`; yield (name, tensor) as each bucket lands."""
    buckets = plan_buckets(metas, bucket_bytes)
    for k, bucket in enumerate(buckets):
        dt = dtype_of(metas[bucket[0]][1])
        sizes = [_numel(metas[i][2]) for i in bucket]
        flat = torch.empty(sum(sizes), dtype=dt, device=device)
        group.broadcast(flat, f"weight sync bucket {k + 1}/{len(buckets)}")
        for i, piece in zip(bucket, torch.split(flat, sizes)):
            yield metas[i][0], piece.view(metas[i][2])


def default_backend() -> str:
    """NCCL when CUDA is present, gloo otherwise (learner and generators must agree)."""
    return "nccl" if torch.cuda.is_available() else "gloo"
