"""Rank 0's side of the weight sync: one group for the live generators, re-formed when they change.

Membership is :class:`learner.orchestrator.membership.Membership`'s: every generator that said
hello and has not been declared gone, with an incarnation that a restart (a new hello) bumps. A
sync uses the current group when membership is unchanged; otherwise it forms a new group under
the next epoch (the ``sync`` message names the epoch and each member's rank). When a sync fails
(a generator died mid-broadcast or never joined) the group is abandoned, so surviving receivers
stop waiting at once, and the sync is retried as soon as membership changes (the dead generator
restarted and said hello, or it was declared gone after ``liveness.generator_timeout_s`` without a
heartbeat), until ``weight_sync.timeout_s``.

The bytes come from a :class:`learner.fsdp.stream_sync.SyncSource`: prepacked with one learner rank,
streamed bucket by bucket from the FSDP2 shards with K ranks; a retried attempt asks the
source again (a stream cannot be resent). The control side (announce, wait until every member
serves the version, retry) and the data side (:meth:`WeightSyncer._open_group`,
:meth:`WeightSyncer._broadcast`: the torch.distributed group) are separate methods.

    syncer = WeightSyncer(cfg, state, pump.send_to, sync_source(model, ranks)); seconds = syncer.sync(version)
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import torch

from asyncrl import messages
from asyncrl.config import RunConfig, parse_address
from asyncrl.hardware import resolve_dtype
from asyncrl.weight_sync import (
    DigestingGroup,
    SyncGroup,
    WeightSyncTimeout,
    connect_store,
    dtype_of,
    group_layout,
    sync_backend,
)
from learner.fsdp.stream_sync import SyncSource
from learner.orchestrator.membership import Members
from learner.orchestrator.state import OrchestratorState

log = logging.getLogger("learner.sync")

SendTo = Callable[[list[bytes], bytes], None]  # (generators, control message): IOPump.send_to


class WeightSyncer:
    def __init__(self, cfg: RunConfig, state: OrchestratorState, send_to: SendTo, source: SyncSource) -> None:
        self.cfg, self.state, self.send_to, self.source = cfg, state, send_to, source
        self.host, self.port = parse_address(cfg.weight_sync.address)
        self.backend = sync_backend(cfg)
        self.store: Any = None  # the TCPStore, hosted here from the first group on
        self.group: SyncGroup | None = None
        self.members: Members = {}  # who the current group was formed with
        self.epoch = -1
        self.last_mb = 0.0  # MiB the last sync broadcast (per receiver): the adapter alone under LoRA
        # The store is a plain TCPStore anyone reaching its port can write to: this run's group keys
        # live under a secret only generators learn, over the (CURVE-authenticated) control channel.
        self.namespace = secrets.token_hex(16)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def host_store(self) -> None:
        """Start the rendezvous store generators connect to (before they are told to join)."""
        if self.store is None:
            self.store = connect_store(self.host, self.port, is_master=True, timeout_s=self.cfg.weight_sync.timeout_s,
                                       who="learner")

    def sync(self, version: int) -> float:
        """Broadcast the source's weights to every live generator; return seconds until all serve ``version``."""
        cfg, source = self.cfg, self.source
        t0 = time.perf_counter()
        bucket = cfg.weight_sync.bucket_mb << 20
        metas = source.prepare(resolve_dtype(cfg.rollout.dtype), bucket, self.device)
        self.last_mb = sum(math.prod(shape) * dtype_of(dt).itemsize for _, dt, shape in metas) / 2**20
        payload = {"version": version, "tensors": [list(m) for m in metas], "bucket_bytes": bucket}
        if source.adapter is not None:  # LoRA: the tensors are the adapter's; generators serve it as a vLLM LoRA
            payload["lora"] = source.adapter
        retry = False
        while True:
            members = self._live_members()
            source.begin()  # before the generators pause (K ranks: the other ranks join the stream)
            try:
                self._sync_once(members, payload, regroup=retry or members != self.members)
                return time.perf_counter() - t0
            except (WeightSyncTimeout, TimeoutError) as e:
                source.abandon()
                with self.state.cond:
                    self.state.counters.sync_failures += 1
                self._drop_group()
                limit = cfg.weight_sync.timeout_s
                if time.perf_counter() - t0 > limit:
                    raise WeightSyncTimeout(f"weight sync v{version} kept failing for {limit:.0f}s "
                                            f"(weight_sync.timeout_s): {e}") from None
                log.warning("weight sync v%d failed (%s); retrying once the generators change", version, e)
                self._await_change(members)
                retry = True

    def _live_members(self) -> Members:
        """At least one generator must be alive to sync to; wait for one (bounded)."""
        ms = self.state.membership
        return self.state.wait_for(lambda: ms.snapshot() or None, self.cfg.learner.wait_timeout_s,
                                   "a live generator to send weights to")

    def _await_change(self, members: Members) -> None:
        ms = self.state.membership
        # nobody changed in time: retry with the same generators (the failure may have been transient)
        with contextlib.suppress(TimeoutError):
            self.state.wait_for(lambda: True if ms.members != members else None, self.cfg.liveness.generator_timeout_s,
                                "a generator to restart or be declared gone")

    def _sync_once(self, members: Members, payload: dict[str, Any], regroup: bool) -> None:
        names = sorted(members)
        version = payload["version"]
        if regroup:
            self._drop_group()
            self.epoch += 1
        tp = self.cfg.rollout.tensor_parallel_size
        ranks, _ = group_layout([n.decode() for n in names], tp)
        self.send_to(names, messages.encode("sync", **payload, epoch=self.epoch, members=[n.decode() for n in names],
                                            tp=tp, ns=self.namespace))
        if regroup:
            log.info("forming weight-sync group epoch %d with %d generator(s) x %d TP worker(s): %s", self.epoch,
                     len(names), tp, ", ".join(n.decode() for n in names))
            self._open_group(ranks, members)
            self.members = dict(members)
        digests = self._broadcast(version)
        if digests is not None:  # authenticated weights: every bucket's digest follows over the CURVE channel
            self.send_to(names, messages.encode("digests", version=version, epoch=self.epoch, digests=digests))
        self.state.wait_for(lambda: self._applied(members, version), self.cfg.weight_sync.timeout_s,
                            f"{len(names)} generator(s) to apply weights v{version}")

    def _open_group(self, ranks: list[str], members: Members) -> None:
        """Form the torch.distributed group of epoch ``self.epoch``: this rank 0, then ``ranks``."""
        self.host_store()
        self.group = SyncGroup(self.host, self.port, 0, len(ranks), timeout_s=self.cfg.weight_sync.timeout_s,
                               backend=self.backend, epoch=self.epoch, store=self.store, names=ranks,
                               join_timeout_s=self.cfg.liveness.generator_timeout_s,
                               cancelled=lambda: self.state.members() != members, namespace=self.namespace)

    def _broadcast(self, version: int) -> list[str] | None:
        """Send every bucket over the group; under CURVE return their digests (else None)."""
        assert self.group is not None
        if self.cfg.transport.curve_dir is None:
            self.source.send(self.group, version)
            return None
        digesting = DigestingGroup(self.group)
        self.source.send(digesting, version)  # type: ignore[arg-type]  # a SyncGroup that also digests
        return digesting.digests

    def _applied(self, members: Members, version: int) -> bool | None:
        """Under the lock: True once every member serves ``version``; raise if one went away or failed."""
        ms = self.state.membership
        if ms.members != members:
            raise WeightSyncTimeout(f"a generator died or restarted while applying weights v{version}")
        failed = ms.take_sync_failures(members, version)
        if failed:
            raise WeightSyncTimeout("; ".join(f"{g.decode(errors='replace')} could not apply weights v{version}: "
                                              f"{why}" for g, why in failed.items()))
        return True if ms.all_serve(members, version) else None

    def _drop_group(self) -> None:
        if self.group is not None:
            self.group.abandon()
            self.group = None
            self.members = {}
