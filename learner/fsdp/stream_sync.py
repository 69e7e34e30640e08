"""Where a weight sync's bucket bytes come from on the learner: prepacked (1 rank) or streamed (K ranks).

:class:`learner.orchestrator.syncer.WeightSyncer` sends whatever a source gives it; both sources send the
same ``tensors`` metadata and the same bytes in the same buckets (:func:`plan_buckets`), so
generators cannot tell them apart.

- :class:`PackedSource` (one learner rank): every shard is the whole tensor, so the live
  parameters are packed into persistent bucket buffers (the whole model in the generators'
  dtype) *before* the ``sync`` message goes out; the generators pause only for the broadcast.
- :class:`StreamedSource` (K > 1 ranks): no rank ever holds a full copy of the model. Names and
  global shapes come from the DTensors without any communication. Per attempt, rank 0 tells
  the other ranks ``sync`` (they run :func:`follow_sync`), then every rank all-gathers the
  parameters one at a time in broadcast order; rank 0 casts each into one of two bucket-sized
  buffers (bucket k into buffer k % 2, after the broadcast of bucket k-2 from that buffer has
  finished) and starts bucket k's broadcast, so gathering k+1 overlaps broadcasting k. The
  first two buckets are filled before the generators are told. Every rank gathers a parameter
  a bounded slice of rows at a time (``SLICE_BYTES`` all ranks together), which rank 0 copies
  straight into the bucket buffer: rank 0 holds two bucket buffers plus ~2 slices; the others
  ~2 slices.

A failed attempt (a generator died mid-broadcast) cannot resend: :meth:`StreamedSource.abandon`
finishes the walk (gathering without sending, so the other ranks leave their collectives) and
drops the buffers a dead group may still be reading; the retry streams again from a new ``sync``.

    source = sync_source(model, ranks)          # rank 0, once
    syncer.sync(source, version)                # prepare, then per attempt: begin, send (abandon)
    follow_sync(model, dtype)                   # ranks 1..K-1 on every "sync" command (dtype: its payload)
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard
from transformers import PreTrainedModel

from asyncrl.weight_sync import SyncGroup, TensorMeta, broadcast_packed, dtype_of, pack_state, plan_buckets
from learner.fsdp import lora
from learner.fsdp.model import broadcast_items, sync_state_dict
from learner.fsdp.ranks import RankChannel


class SyncSource(Protocol):
    adapter: dict | None  # a LoRA policy's adapter_config (the sync then carries only its tensors)

    def prepare(self, dtype: str, bucket_bytes: int, device: torch.device) -> list[TensorMeta]:
        """Once per sync, before any attempt: the ``tensors`` metadata in broadcast order."""

    def begin(self) -> None:
        """Per attempt, before the ``sync`` message goes out to the generators."""

    def send(self, group: SyncGroup, version: int) -> None:
        """Broadcast every bucket from rank 0 of ``group``; return once all are sent."""

    def abandon(self) -> None:
        """After a failed attempt: leave every learner rank ready for the next ``begin``."""


def sync_source(model: PreTrainedModel, ranks: RankChannel) -> SyncSource:
    return StreamedSource(model, ranks) if dist.get_world_size() > 1 else PackedSource(model)


def _adapter(model: PreTrainedModel) -> dict | None:
    return lora.adapter_config(model) if lora.is_adapted(model) else None


def sync_params(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter or buffer, a DTensor under FSDP2) in broadcast order, tied ``lm_head`` skipped.
    Every learner rank gets the same list: it is the all-gather order."""
    return broadcast_items(model, dict(model.state_dict()))


SLICE_BYTES = 8 << 20  # rows gathered per collective, all ranks together: the only scratch a sync needs


class Gatherer:
    """Gathers FSDP2 shards into a caller's buffer (rank 0: a slice of a bucket buffer), a bounded
    number of rows at a time: no rank ever holds a whole gathered parameter, let alone the model.

    ``dtype``: each rank casts its rows to the generators' dtype before the all-gather (the cast is
    elementwise, so the bytes equal casting the full tensor): half the traffic of fp32.
    """

    def __init__(self, dtype: torch.dtype | None = None, slice_bytes: int = SLICE_BYTES) -> None:
        self.dtype, self.slice_bytes = dtype, slice_bytes
        self.send: torch.Tensor | None = None
        self.recv: torch.Tensor | None = None

    def gather_into(self, t: torch.Tensor, out: torch.Tensor | None) -> None:
        """Write the full tensor, flattened, into ``out`` (None: only take part in the collectives).

        A collective over the DTensor's mesh for a shard, so every rank calls it in the same order.
        """
        dtype = self.dtype or t.dtype
        if not isinstance(t, DTensor):
            if out is not None:
                out.copy_(t.detach().reshape(-1))
            return
        if t.device.type != t.device_mesh.device_type:  # CPU-offloaded shards of an accelerator mesh
            t = cast(DTensor, t.to(t.device_mesh.device_type))  # DTensor.to returns a DTensor
        if t.device_mesh.ndim != 1 or t.placements[0] != Shard(0) or t.dim() == 0:
            with torch.no_grad():
                full = t.full_tensor()
            if out is not None:
                out.copy_(full.reshape(-1))
            return
        self._rows(t, out, dtype)

    def _rows(self, t: DTensor, out: torch.Tensor | None, dtype: torch.dtype) -> None:
        """FSDP2 shards dim 0 like torch.chunk: rank r holds rows [r*c, (r+1)*c) (fewer at the end).
        Slice j gathers rows [j0, j1) of every rank's chunk; rank r's part lands at rows r*c + j0."""
        group, world = t.device_mesh.get_group(), t.device_mesh.size()
        n0 = t.shape[0]
        width = t.numel() // n0
        c = -(-n0 // world)
        local = t.to_local().detach().reshape(-1, width) if t.to_local().numel() else None
        have = local.shape[0] if local is not None else 0
        step = max(1, self.slice_bytes // (world * width * dtype.itemsize))
        for j0 in range(0, c, step):
            h = min(step, c - j0)
            send = self._buf("send", h * width, dtype, t.device).view(h, width)
            mine = max(0, min(h, have - j0))
            if mine and local is not None:
                send[:mine].copy_(local[j0:j0 + mine])  # the rows past this shard's end are never read
            recv = self._buf("recv", world * h * width, dtype, t.device)
            dist.all_gather_single(recv, send.reshape(-1), group=group)
            if out is None:
                continue
            for r in range(world):
                lo = r * c + j0
                valid = max(0, min(h, n0 - lo))
                if valid:
                    out[lo * width:(lo + valid) * width].copy_(recv[r * h * width:(r * h + valid) * width])

    def _buf(self, which: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        b = getattr(self, which)
        if b is None or b.numel() < numel or b.dtype != dtype or b.device != device:
            setattr(self, which, None)  # free the old one first
            b = torch.empty(numel, dtype=dtype, device=device)
            setattr(self, which, b)
        return b[:numel]


def follow_sync(model: PreTrainedModel, dtype: str) -> None:
    """Ranks 1..K-1: take part in rank 0's gathers of one streamed sync attempt, one parameter at a
    time, in the generators' ``dtype`` (as rank 0 does)."""
    g = Gatherer(dtype_of(dtype))
    for _, t in sync_params(model):
        g.gather_into(t, None)


class PackedSource:
    """One learner rank: pack views of the live parameters before the generators pause."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.adapter = _adapter(model)
        # Kept between syncs: packing into fresh buffers page-faults the whole model in every time
        # (0.15 s vs 0.045 s for SmolLM2-135M here). A retry resends the same packed buffers.
        self.buffers: list[torch.Tensor] = []
        self.flats: list[torch.Tensor] = []

    def prepare(self, dtype: str, bucket_bytes: int, device: torch.device) -> list[TensorMeta]:
        items = broadcast_items(self.model, sync_state_dict(self.model))
        self.flats = pack_state(items, dtype, bucket_bytes, device, buffers=self.buffers)
        return [(name, dtype, list(t.shape)) for name, t in items]

    def begin(self) -> None:
        pass

    def send(self, group: SyncGroup, version: int) -> None:
        broadcast_packed(group, self.flats, version=version)

    def abandon(self) -> None:
        pass


class StreamedSource:
    """K learner ranks: gather bucket by bucket into two buffers, broadcasting while the next gathers."""

    def __init__(self, model: PreTrainedModel, ranks: RankChannel) -> None:
        self.model, self.ranks = model, ranks
        self.adapter = _adapter(model)
        self.buffers: list[torch.Tensor] = []  # two, of the largest bucket's size; kept between syncs
        self.items: list[tuple[str, torch.Tensor]] = []
        self.buckets: list[list[int]] = []
        self.filled = 0  # buckets gathered in this attempt (the other ranks gathered as many)
        self.gatherer = Gatherer()  # per attempt: its slice scratch is freed after
        self.works: list[tuple[dist.Work, str] | None] = [None, None]
        self.dtype: torch.dtype | None = None  # the generators', set by prepare

    def prepare(self, dtype: str, bucket_bytes: int, device: torch.device) -> list[TensorMeta]:
        self.items = sync_params(self.model)
        metas = [(name, dtype, list(t.shape)) for name, t in self.items]  # DTensor: the global shape
        self.buckets = plan_buckets(metas, bucket_bytes)
        numel = max(sum(self.items[i][1].numel() for i in b) for b in self.buckets)
        dt = self.dtype = dtype_of(dtype)
        if not (len(self.buffers) == 2 and all(b.numel() == numel and b.dtype == dt and b.device == device
                                                for b in self.buffers)):
            self.buffers = [torch.empty(numel, dtype=dt, device=device) for _ in range(2)]
        return metas

    def begin(self) -> None:
        self.ranks.send("sync", str(self.dtype).removeprefix("torch.").encode())
        self.filled, self.works, self.gatherer = 0, [None, None], Gatherer(self.dtype)
        for _ in range(min(2, len(self.buckets))):  # before the generators pause
            self._fill(None)

    def send(self, group: SyncGroup, version: int) -> None:
        n = len(self.buckets)
        for k in range(n):
            if k == self.filled:
                self._fill(group)
            what = f"weight sync v{version} bucket {k + 1}/{n}"
            self.works[k % 2] = (group.broadcast_async(self._view(k)), what)
        self.gatherer = Gatherer(self.dtype)
        for slot in (n % 2, (n + 1) % 2):  # the older broadcast first
            self._wait(group, slot)

    def abandon(self) -> None:
        for k in range(self.filled, len(self.buckets)):
            for i in self.buckets[k]:
                self.gatherer.gather_into(self.items[i][1], None)
        self.filled, self.gatherer = len(self.buckets), Gatherer(self.dtype)
        # A dead group may still be reading the buffers: the next attempt packs into new ones.
        self.buffers = [torch.empty_like(b) for b in self.buffers]
        self.works = [None, None]

    def _fill(self, group: SyncGroup | None) -> None:
        """Gather bucket ``filled`` (every rank) and cast it into its buffer once that is free."""
        k = self.filled
        if group is not None:
            self._wait(group, k % 2)  # bucket k-2 went out of this buffer
        flat, offset = self.buffers[k % 2], 0
        for i in self.buckets[k]:
            numel = self.items[i][1].numel()
            self.gatherer.gather_into(self.items[i][1], flat[offset:offset + numel])
            offset += numel
        self.filled += 1

    def _view(self, k: int) -> torch.Tensor:
        return self.buffers[k % 2][:sum(self.items[i][1].numel() for i in self.buckets[k])]

    def _wait(self, group: SyncGroup, slot: int) -> None:
        work, self.works[slot] = self.works[slot], None
        if work is not None:
            group.wait(*work)
