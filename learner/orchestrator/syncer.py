"""Rank 0's side of the weight sync: one group for the live generators, re-formed when they change.

Membership is what :class:`learner.orchestrator.io.LearnerIO` knows: every generator that said hello and
has not been declared gone, with an incarnation that a restart (a new hello) bumps. A sync
uses the current group when membership is unchanged; otherwise it forms a new group under
the next epoch (the ``sync`` message names the epoch and each member's rank). When a sync
fails (a generator died mid-broadcast or never joined) the group is abandoned, so surviving
receivers stop waiting at once, and the sync is retried as soon as membership changes (the
dead generator restarted and said hello, or it was declared gone after
``learner.generator_timeout_s`` without a heartbeat), until ``learner.sync_timeout_s``.

The bytes come from a :class:`learner.fsdp.stream_sync.SyncSource`: prepacked with one learner rank,
streamed bucket by bucket from the FSDP2 shards with K ranks; a retried attempt asks the
source again (a stream cannot be resent).

    syncer = WeightSyncer(cfg, io); seconds = syncer.sync(sync_source(model, ranks), version)
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import torch

from asyncrl import messages
from asyncrl.config import RunConfig, parse_address
from asyncrl.hardware import resolve_dtype
from asyncrl.weight_sync import (DigestingGroup, SyncGroup, WeightSyncTimeout, connect_store, sync_backend,
                                 group_layout)
from learner.orchestrator.io import LearnerIO
from learner.fsdp.stream_sync import SyncSource

log = logging.getLogger("learner.sync")

Members = dict[bytes, int]  # generator identity -> incarnation


class WeightSyncer:
    def __init__(self, cfg: RunConfig, io: LearnerIO) -> None:
        self.cfg, self.io = cfg, io
        self.host, self.port = parse_address(cfg.transport.weight_sync)
        self.backend = sync_backend(cfg)
        self.store = connect_store(self.host, self.port, is_master=True, timeout_s=cfg.learner.sync_timeout_s,
                                   who="learner")
        self.group: SyncGroup | None = None
        self.members: Members = {}
        self.epoch = -1
        self.failures = 0  # syncs that had to be retried (a generator died or never joined)
        # The store is a plain TCPStore anyone reaching its port can write to: this run's group keys
        # live under a secret only generators learn, over the (CURVE-authenticated) control channel.
        self.namespace = secrets.token_hex(16)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def stale(self) -> bool:
        """Membership changed since the group was formed (someone died, restarted or joined)."""
        return self.io.membership() != self.members

    def sync(self, source: SyncSource, version: int) -> float:
        """Broadcast ``source``'s weights to every live generator; return seconds until all serve ``version``."""
        cfg = self.cfg
        t0 = time.perf_counter()
        bucket = cfg.learner.bucket_mb << 20
        metas = source.prepare(resolve_dtype(cfg.rollout.dtype), bucket, self.device)
        payload = {"version": version, "tensors": [list(m) for m in metas], "bucket_bytes": bucket}
        retry = False
        while True:
            members = self._live_members()
            source.begin()  # before the generators pause (K ranks: the other ranks join the stream)
            try:
                self._sync_once(members, source, payload, regroup=retry or members != self.members)
                return time.perf_counter() - t0
            except (WeightSyncTimeout, TimeoutError) as e:
                source.abandon()
                self.failures += 1
                self._drop_group()
                if time.perf_counter() - t0 > cfg.learner.sync_timeout_s:
                    raise WeightSyncTimeout(f"weight sync v{version} kept failing for "
                                            f"{cfg.learner.sync_timeout_s:.0f}s (learner.sync_timeout_s): {e}") from None
                log.warning("weight sync v%d failed (%s); retrying once the generators change", version, e)
                self._await_change(members)
                retry = True

    def _live_members(self) -> Members:
        """At least one generator must be alive to sync to; wait for one (bounded)."""
        return self.io.wait_for(lambda: self.io.membership_locked() or None, self.cfg.learner.wait_timeout_s,
                                "a live generator to send weights to")

    def _await_change(self, members: Members) -> None:
        try:
            self.io.wait_for(lambda: True if self.io.membership_locked() != members else None,
                             self.cfg.learner.generator_timeout_s, "a generator to restart or be declared gone")
        except TimeoutError:
            pass  # nobody changed: retry with the same generators (the failure may have been transient)

    def _sync_once(self, members: Members, source: SyncSource, payload: dict[str, Any], regroup: bool) -> None:
        names = sorted(members)
        version = payload["version"]
        if regroup:
            self._drop_group()
            self.epoch += 1
        tp = self.cfg.rollout.tensor_parallel_size
        ranks, _ = group_layout([n.decode() for n in names], tp)
        msg = messages.encode("sync", **payload, epoch=self.epoch, members=[n.decode() for n in names], tp=tp,
                              ns=self.namespace)
        self.io.send_to(names, msg)
        if regroup:
            lr = self.cfg.learner
            log.info("forming weight-sync group epoch %d with %d generator(s) x %d TP worker(s): %s", self.epoch,
                     len(names), tp, ", ".join(n.decode() for n in names))
            self.group = SyncGroup(self.host, self.port, 0, len(ranks), timeout_s=lr.sync_timeout_s,
                                   backend=self.backend, epoch=self.epoch, store=self.store, names=ranks,
                                   join_timeout_s=lr.generator_timeout_s,
                                   cancelled=lambda: self.io.membership() != members, namespace=self.namespace)
            self.members = dict(members)
        assert self.group is not None
        if self.cfg.transport.curve_dir is None:
            source.send(self.group, version)
        else:  # authenticated weights: every bucket's digest follows over the CURVE channel
            digesting = DigestingGroup(self.group)
            source.send(digesting, version)
            self.io.send_to(names, messages.encode("digests", version=version, epoch=self.epoch,
                                                   digests=digesting.digests))
        self.io.wait_for(lambda: self._applied(members, version), self.cfg.learner.sync_timeout_s,
                         f"{len(names)} generator(s) to apply weights v{version}")

    def _applied(self, members: Members, version: int) -> bool | None:
        """Under the I/O lock: True once every member serves ``version``; raise if one went away."""
        if self.io.membership_locked() != members:
            raise WeightSyncTimeout(f"a generator died or restarted while applying weights v{version}")
        failed = {g: why for g, (v, why) in self.io.sync_failed.items() if g in members and v == version}
        if failed:
            for g in failed:
                del self.io.sync_failed[g]
            raise WeightSyncTimeout("; ".join(f"{g.decode(errors='replace')} could not apply weights v{version}: "
                                              f"{why}" for g, why in failed.items()))
        return True if all(self.io.synced.get(g, -1) >= version for g in members) else None

    def _drop_group(self) -> None:
        if self.group is not None:
            self.group.abandon()
            self.group = None
            self.members = {}
