"""The learner → generators weight broadcast group and its bucketed protocol.

Rank 0 is the learner, ranks 1..N the generators' vLLM workers. The group is a
stand-alone torch.distributed process group (gloo on CPU, NCCL on GPU) built from a
TCPStore at ``weight_sync.address``, so it never touches vLLM's own groups or the
learner's FSDP group. A sync is announced by a ``sync`` control message carrying
``tensors`` = [[name, dtype, shape], ...] in broadcast order; both sides derive the
same buckets from it with :func:`plan_buckets`, so only raw tensor bytes cross the
group: each bucket is one flat tensor in the generators' dtype, filled by a single
casting copy. A one-rank learner packs every bucket before announcing the sync, so generators
pause only for the broadcast and their in-place reload; a K-rank learner streams the same
buckets as it gathers them (``learner/fsdp/stream_sync.py``).

Every wait has a timeout and fails with :class:`WeightSyncTimeout` naming the side that
did not arrive: the ranks missing at the rendezvous, or the bucket a broadcast stalled on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from asyncrl.errors import PeerMissing

TensorMeta = tuple[str, str, list[int]]  # name, dtype name, shape

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightSyncTimeout(PeerMissing):
    """A weight-sync rendezvous or broadcast did not complete in time; says who is missing."""


def dtype_of(name: str) -> torch.dtype:
    return _DTYPES[name]


def _role(rank: int) -> str:
    return "learner" if rank == 0 else f"generator {rank - 1}"


def connect_store(host: str, port: int, *, is_master: bool, timeout_s: float, who: str) -> dist.TCPStore:
    """The run's rendezvous store: hosted by the learner, reused by every group epoch."""
    try:
        return dist.TCPStore(host, port, None, is_master=is_master, timeout=timedelta(seconds=timeout_s),
                             wait_for_workers=False, use_libuv=True)
    except (RuntimeError, dist.DistStoreError) as e:
        raise WeightSyncTimeout(f"weight-sync group at {host}:{port}: {who} could not reach the learner's "
                                f"store within {timeout_s:.0f}s ({e})") from None


class SyncGroup:
    """A process group of ``world_size`` ranks over the learner's TCPStore.

    Membership changes (a generator died, restarted or joined) form a new group under a
    new ``epoch``: its keys live under their own store prefix, so a group of dead peers
    never blocks the next one. Rank 0 is always the learner.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, *, timeout_s: float,
                 backend: str = "gloo", epoch: int = 0, store: dist.TCPStore | None = None,
                 names: list[str] | None = None, join_timeout_s: float | None = None,
                 cancelled: Callable[[], bool] | None = None, namespace: str = "",
                 device: torch.device | None = None) -> None:
        timeout = timedelta(seconds=timeout_s)
        # Every key lives under the run's secret namespace (sent to generators only over the control
        # channel, CURVE-authenticated when configured): a process that merely reaches the store's
        # port cannot find this group's keys to abort it, join it or take over a rank.
        self.keys = f"asyncrl/{namespace}/" if namespace else "asyncrl_"
        self.names = names or [_role(r) for r in range(world_size)]  # rank -> who, for error messages
        self.rank, self.world_size, self.timeout_s, self.epoch = rank, world_size, timeout_s, epoch
        self.where = f"weight-sync group at {host}:{port} (epoch {epoch})"
        # NCCL: the caller's GPU (a vLLM worker passes its own device; the learner its current one)
        if backend != "nccl":
            self.device = torch.device("cpu")
        elif device is not None and device.type == "cuda":
            self.device = device
        else:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.store = store if store is not None else connect_store(
            host, port, is_master=rank == 0, timeout_s=timeout_s, who=self.names[rank])
        self.store.set(f"{self.keys}joined/{epoch}/{rank}", "1")
        self._await_peers(join_timeout_s or timeout_s, cancelled)
        prefixed = dist.PrefixStore(f"{self.keys}weight_sync/{epoch}", self.store)
        # A c10d backend (gloo or NCCL). torch's stubs give these classes neither their collectives
        # (broadcast) nor gloo's _Options, which the runtime has; hence Any and the ignore below.
        self.pg: Any = None
        try:
            if backend == "gloo":
                opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # see above
                opts._timeout = timeout
                opts._devices = [dist.ProcessGroupGloo.create_device(hostname=local_address(host, port))]
                self.pg = dist.ProcessGroupGloo(prefixed, rank, world_size, opts)
            elif backend == "nccl":
                # NCCL's own watchdog (default 10 min, which kills the process) must outlast our
                # timeouts, so a stalled peer is reported by name (as vllm/platforms/cuda.py does)
                nccl_opts = dist.ProcessGroupNCCL.Options()
                nccl_opts._timeout = timeout + timedelta(seconds=60)
                self.pg = dist.ProcessGroupNCCL(prefixed, rank, world_size, nccl_opts)
            else:
                raise ValueError(f"unknown weight-sync backend {backend!r}")
        except (RuntimeError, dist.DistError) as e:
            raise WeightSyncTimeout(f"{self.where}: {self.names[rank]} waited {timeout_s:.0f}s; "
                                    f"{self._missing()} did not join ({type(e).__name__})") from None

    def _await_peers(self, timeout_s: float, cancelled: Callable[[], bool] | None) -> None:
        """Wait until every rank has registered, so a dead peer costs ``timeout_s``, not the op timeout."""
        deadline = time.monotonic() + timeout_s
        keys = [f"{self.keys}joined/{self.epoch}/{r}" for r in range(self.world_size)]
        while True:
            if self._check(keys):
                return
            if cancelled is not None and cancelled():
                raise WeightSyncTimeout(f"{self.where}: membership changed while waiting for "
                                        f"{self._missing()} to join")
            if self._aborted():
                raise WeightSyncTimeout(f"{self.where}: the learner abandoned this group")
            if time.monotonic() > deadline:
                raise WeightSyncTimeout(f"{self.where}: {self.names[self.rank]} waited {timeout_s:.0f}s; "
                                        f"{self._missing()} did not join")
            time.sleep(0.05)

    def _check(self, keys: list[str]) -> bool:
        try:
            return bool(self.store.check(keys))
        except Exception as e:  # noqa: BLE001 - the store is the learner's: it is gone
            raise WeightSyncTimeout(f"{self.where}: the learner's store is unreachable ({e})") from None

    def _aborted(self) -> bool:
        return self.rank != 0 and self._check([f"{self.keys}abort/{self.epoch}"])

    def abandon(self) -> None:
        """Rank 0: give up on this group (a peer died); peers waiting in it fail at once."""
        with contextlib.suppress(Exception):  # nothing to tell if the store is gone
            self.store.set(f"{self.keys}abort/{self.epoch}", "1")
        self.close()

    def close(self) -> None:
        """Drop the process group (its peers may be dead); the store stays for the next epoch."""
        pg, self.pg = getattr(self, "pg", None), None
        if pg is not None and hasattr(pg, "abort") and self.device.type == "cuda":
            pg.abort()

    def _missing(self) -> str:
        missing = []
        for r in range(self.world_size):
            try:
                if not self.store.check([f"{self.keys}joined/{self.epoch}/{r}"]):
                    missing.append(self.names[r])
            except Exception:  # noqa: BLE001 - the store itself is gone: the learner is
                return "the learner (its store is unreachable)"
        return ", ".join(missing) if missing else "a peer (all registered, the rendezvous failed)"

    def broadcast_async(self, tensor: torch.Tensor) -> dist.Work:
        if self.pg is None:
            raise WeightSyncTimeout(f"{self.where}: the group was closed")
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([tensor], opts)

    def wait(self, work: dist.Work, what: str) -> None:
        """Wait for ``work``; on a timeout name the side that stopped answering. Receivers also
        stop waiting as soon as the learner abandons the group (another peer died mid-sync):
        gloo alone would leave them blocked until the timeout."""
        deadline = time.monotonic() + self.timeout_s
        next_check = 0.0
        while not work.is_completed():
            now = time.monotonic()
            if now > deadline:
                raise self._stalled(what, None)
            if self.rank != 0 and now >= next_check:
                if self._aborted():
                    raise WeightSyncTimeout(f"{self.where}: {what}: the learner abandoned the group "
                                            f"(a peer failed)")
                next_check = now + 0.05
            time.sleep(0.0005)
        try:
            work.wait()
        except (RuntimeError, dist.DistError) as e:
            raise self._stalled(what, e) from None

    def _stalled(self, what: str, e: BaseException | None) -> WeightSyncTimeout:
        other = "a generator stopped receiving" if self.rank == 0 else "the learner stopped sending"
        if e is None:
            return WeightSyncTimeout(f"{self.where}: {what} did not complete within {self.timeout_s:.0f}s: {other}")
        return WeightSyncTimeout(f"{self.where}: {what} failed: {other} ({type(e).__name__}: {str(e)[:200]})")

    def broadcast(self, tensor: torch.Tensor, what: str = "broadcast") -> None:
        self.wait(self.broadcast_async(tensor), what)


def local_address(host: str, port: int) -> str:
    """This host's address on the route to ``host``: the interface gloo must listen on so peers on
    other hosts can reach it (its default, the hostname's address, can be loopback or an interface
    the peers cannot reach, e.g. inside network namespaces)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # UDP connect sends nothing
        try:
            s.connect((host, port))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def group_layout(members: list[str], tp_size: int) -> tuple[list[str], dict[str, int]]:
    """Rank names of a sync group and each generator's first rank: rank 0 is the learner, then
    every generator's ``tp_size`` vLLM workers in member order (worker t of a generator whose
    first rank is b has rank b + t)."""
    names, first = ["learner"], {}
    for m in members:
        first[m] = len(names)
        names += [m if tp_size == 1 else f"{m}/tp{t}" for t in range(tp_size)]
    return names, first


def bucket_digest(flat: torch.Tensor) -> str:
    """SHA-256 of a bucket's bytes (hashlib releases the GIL, so it overlaps gloo's transfer threads).

    Sent over the authenticated control channel and checked by every receiver before the weights
    serve: a receiver that got other bytes (a foreign sender on the unauthenticated group) rejects them.
    """
    import hashlib

    data = flat.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    raw = data.contiguous().view(torch.uint8).numpy()
    # numpy's stubs declare the buffer protocol for Python >= 3.12 only; the array has it at runtime.
    return hashlib.sha256(memoryview(raw)).hexdigest()  # type: ignore[arg-type]


class DigestingGroup:
    """Rank 0's view of a :class:`SyncGroup` that records the :func:`bucket_digest` of every tensor it
    broadcasts (hashed while gloo sends it: the buffer is not reused before its broadcast is waited on)."""

    def __init__(self, group: SyncGroup) -> None:
        self.group = group
        self.digests: list[str] = []

    def broadcast_async(self, tensor: torch.Tensor) -> dist.Work:
        work = self.group.broadcast_async(tensor)
        self.digests.append(bucket_digest(tensor))
        return work

    def broadcast(self, tensor: torch.Tensor, what: str = "broadcast") -> None:
        self.group.wait(self.broadcast_async(tensor), what)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.group, name)


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
          device: torch.device, flat: torch.Tensor | None = None) -> torch.Tensor:
    """One flat tensor of the bucket's tensors, cast while copied (no per-tensor temporaries).

    ``flat``: an existing buffer of the right size to fill instead of allocating one.
    """
    if flat is None:
        flat = torch.empty(sum(named[i][1].numel() for i in bucket), dtype=dtype, device=device)
    offset = 0
    for i in bucket:
        t = named[i][1].detach().reshape(-1)
        flat[offset:offset + t.numel()].copy_(t)
        offset += t.numel()
    return flat


def pack_state(named: list[tuple[str, torch.Tensor]], dtype: str, bucket_bytes: int,
               device: torch.device | str = "cpu",
               buffers: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The buckets of :func:`plan_buckets` as flat tensors in ``dtype``, ready to broadcast.

    Packing before the ``sync`` message goes out keeps the casts out of the generators' pause.
    ``buffers``: a list the caller keeps between syncs (as in :func:`receive_state`); bucket k
    is packed into ``buffers[k]`` when it fits. SmolLM2-135M, 2-core CPU (``bench_weight_sync.py
    --pieces``, 2026-12-01): 0.045 s into reused buffers vs 0.154 s into fresh ones, which
    page-fault 256 MiB in on every sync.
    The returned tensors are then the buffers themselves: valid until the next such call.
    """
    dt, dev = dtype_of(dtype), torch.device(device)
    buckets = plan_buckets(tensor_metas(named, dtype), bucket_bytes)
    flats = []
    for k, bucket in enumerate(buckets):
        flat = None
        if buffers is not None:
            flat = _buffer(buffers, k, sum(named[i][1].numel() for i in bucket), dt, dev)
        flats.append(_pack(named, bucket, dt, dev, flat))
    return flats


def broadcast_packed(group: SyncGroup, flats: list[torch.Tensor], version: int | None = None) -> int:
    """Broadcast packed buckets back to back from rank 0; return bytes sent."""
    tag = f"weight sync v{version}" if version is not None else "weight sync"
    works = [(group.broadcast_async(f), f"{tag} bucket {k + 1}/{len(flats)}") for k, f in enumerate(flats)]
    for work, what in works:
        group.wait(work, what)
    return sum(f.numel() * f.element_size() for f in flats)


def send_state(group: SyncGroup, named: list[tuple[str, torch.Tensor]], dtype: str, bucket_bytes: int,
               version: int | None = None, buffers: list[torch.Tensor] | None = None) -> int:
    """Pack (into ``buffers`` if given, see :func:`pack_state`) and broadcast tensors cast to
    ``dtype`` from rank 0; return bytes sent."""
    return broadcast_packed(group, pack_state(named, dtype, bucket_bytes, group.device, buffers), version)


def receive_state(group: SyncGroup, metas: list[TensorMeta], bucket_bytes: int,
                  device: str | torch.device = "cpu",
                  buffers: list[torch.Tensor] | None = None,
                  digests: list[str] | None = None, ring: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive the buckets of :func:`send_state`; yield (name, tensor) as each bucket lands.

    ``digests``: when given, the :func:`bucket_digest` of each bucket is appended as it lands (the
    caller compares them with the learner's before the weights may serve).

    ``buffers``: a list the caller keeps between syncs; bucket k lands in ``buffers[k]`` when
    that has the right size/dtype/device (otherwise a new one is made and stored there). This
    saves allocating, and page-faulting in, ~``bucket_bytes`` per bucket on every sync. The
    yielded tensors are views of the buffers: only valid until the next sync that reuses them.

    ``ring``: with R > 0 only R bucket buffers exist (a GPU then holds R buckets, not a second copy
    of the model); bucket k+R is received into bucket k's buffer once the caller has asked for the
    tensor after bucket k's last one. Only for callers that are done with a tensor when they ask for
    the next (an in-place copy); vLLM's layer-wise reload keeps tensors until a layer completes.
    """
    buckets = plan_buckets(metas, bucket_bytes)
    sizes = [[_numel(metas[i][2]) for i in bucket] for bucket in buckets]
    dev = torch.device(device)
    slots = min(ring, len(buckets)) if ring > 0 else len(buckets)
    numel = [max(sum(sz) for sz in sizes[k::slots]) for k in range(slots)] if ring > 0 else [sum(sz) for sz in sizes]
    flats = [_buffer(buffers, k, numel[k], dtype_of(metas[buckets[k][0]][1]), dev) for k in range(slots)]

    def post(k: int) -> Any:
        return group.broadcast_async(flats[k % slots][:sum(sizes[k])])

    # Receives are posted ahead (all of them without a ring): gloo/NCCL fill bucket k+1 while the
    # caller applies k.
    works = {k: post(k) for k in range(slots)}
    for k, bucket in enumerate(buckets):
        group.wait(works.pop(k), f"weight sync bucket {k + 1}/{len(buckets)}")
        flat = flats[k % slots][:sum(sizes[k])]
        if digests is not None:
            digests.append(bucket_digest(flat))
        for i, piece in zip(bucket, torch.split(flat, sizes[k])):
            yield metas[i][0], piece.view(metas[i][2])
        if k + slots < len(buckets):  # the caller is done with bucket k: reuse its buffer
            works[k + slots] = post(k + slots)


def _buffer(buffers: list[torch.Tensor] | None, k: int, numel: int, dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """``buffers[k]`` if it fits (numel, dtype, device), else a new tensor stored at ``buffers[k]``."""
    if buffers is None:
        return torch.empty(numel, dtype=dtype, device=device)
    if k < len(buffers):
        b = buffers[k]
        if b.numel() == numel and b.dtype == dtype and b.device == device:
            return b
    flat = torch.empty(numel, dtype=dtype, device=device)
    if k < len(buffers):
        buffers[k] = flat
    else:
        assert k == len(buffers), "buckets are filled in order"
        buffers.append(flat)
    return flat


def default_backend(choice: str = "auto") -> str:
    """The weight-sync backend (learner and generators must agree): ``weight_sync.backend``;
    auto is NCCL when CUDA is present, gloo otherwise. NCCL refuses two ranks on one GPU ("Duplicate
    GPU detected"): runs that share GPUs between the learner and generators choose gloo."""
    if choice != "auto":
        return choice
    return "nccl" if torch.cuda.is_available() else "gloo"


def sync_backend(cfg: Any) -> str:
    """:func:`default_backend` for a run config: auto picks gloo when roles may share GPUs."""
    choice = cfg.weight_sync.backend
    if choice == "auto" and cfg.placement.allow_overlap:
        return "gloo"
    return default_backend(choice)
