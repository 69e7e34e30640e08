"""A generator's side of a weight sync: pause, join the group, receive, verify, resume.

A ``sync`` message pauses the engine (requests in flight are kept), joins the weight-sync group
of the message's epoch if it is new (its ``tp`` workers as consecutive ranks, under the run's
secret store namespace ``ns``), and has every vLLM worker receive and apply the broadcast. With
``transport.curve_dir`` set the weight path is authenticated too: each worker hashes every bucket
it received, the learner sends its own digests over the CURVE channel, and the engine resumes only
when they match. A sync that fails or does not verify leaves the engine paused (half-applied or
foreign weights never serve) and tells the learner (``sync_failed``) so it re-sends at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asyncrl.config import RunConfig, parse_address
from asyncrl.weight_sync import group_layout, sync_backend
from rollout.lora import adapter_id, lora_request

log = logging.getLogger("rollout")


class WeightsRejected(RuntimeError):
    """The received weights are not the learner's (digest mismatch) or their digests never came."""


class WeightReceiver:
    def __init__(self, cfg: RunConfig, engine: Any, identity: str, index: int,
                 send: Callable[..., Awaitable[None]],
                 await_message: Callable[[str, Callable[[dict], bool], float], Awaitable[dict]]) -> None:
        self.cfg, self.engine, self.identity, self.index = cfg, engine, identity, index
        self.send, self.await_message = send, await_message
        self.epoch: int | None = None  # group joined; None before the first sync / after a failure
        self.paused = False
        self.rejected = 0  # syncs whose bytes did not match the learner's digests
        self.adapter: Any = None  # LoRA training: the LoRARequest every generate names (rollout/lora.py)

    async def apply(self, msg: dict[str, Any]) -> int | None:
        """Apply one ``sync``; return the version now served, or None (still paused, learner told)."""
        if self.identity not in msg["members"]:
            return None
        if not self.paused:
            await self.engine.pause_generation(mode="keep", clear_cache=False)
            self.paused = True
        verify = self.cfg.transport.curve_dir is not None
        try:
            if msg["epoch"] != self.epoch:
                await self._join(msg)
            if "lora" in msg:  # adapter-only sync: installed as a new vLLM LoRA (rollout/lora.py)
                results = await self.engine.collective_rpc(
                    "asyncrl_receive_lora",
                    args=(msg["tensors"], msg["bucket_bytes"], msg["lora"], adapter_id(msg["version"]), verify))
            else:
                results = await self.engine.collective_rpc(
                    "asyncrl_receive_weights",
                    args=(msg["tensors"], msg["bucket_bytes"], self.cfg.rollout.weight_apply, verify))
            if verify:
                await self._verify(msg, [r["digests"] for r in results])
            if "lora" in msg:
                self.adapter = lora_request(msg["version"])
            # Preempt running requests so no KV computed by the old weights is reused.
            await self.engine.reset_prefix_cache(reset_running_requests=True)
        except Exception as e:  # noqa: BLE001 - a peer died mid-sync, or foreign bytes: the learner re-sends
            if getattr(self.engine, "errored", False):
                raise
            self.epoch = None
            level = log.error if isinstance(e, WeightsRejected) else log.warning
            level("weight sync v%d failed (%s); staying paused until the learner sends the weights again",
                  msg["version"], str(e)[:300])
            await self.send("sync_failed", generator=self.index, version=msg["version"], why=str(e)[:300])
            return None
        await self.engine.resume_generation()
        self.paused = False
        return int(msg["version"])

    async def _verify(self, msg: dict[str, Any], received: list[list[str]]) -> None:
        version, epoch = msg["version"], msg["epoch"]
        expected = await self.await_message(
            "digests", lambda m: m["version"] == version and m["epoch"] == epoch, self.cfg.weight_sync.timeout_s)
        for worker, got in enumerate(received):
            if len(got) != len(expected["digests"]):
                raise WeightsRejected(f"TP worker {worker} received {len(got)} bucket(s), the learner sent "
                                      f"{len(expected['digests'])}")
            bad = [k for k, (a, b) in enumerate(zip(got, expected["digests"])) if a != b]
            if bad:
                self.rejected += 1
                raise WeightsRejected(f"weights v{version}: bucket(s) {[k + 1 for k in bad][:5]} on TP worker "
                                      f"{worker} do not match the learner's SHA-256 digests (foreign or corrupted "
                                      f"bytes on the weight-sync group); not serving them")
        log.info("weights v%d verified: %d bucket digest(s) match on %d TP worker(s)", version,
                 len(expected["digests"]), len(received))

    async def _join(self, msg: dict[str, Any]) -> None:
        cfg = self.cfg
        host, port = parse_address(cfg.weight_sync.address)
        tp = cfg.rollout.tensor_parallel_size
        if msg["tp"] != tp:
            raise RuntimeError(f"the learner's sync group gives each generator {msg['tp']} TP worker(s) but this "
                               f"generator runs rollout.tensor_parallel_size={tp}: start every process from the "
                               f"same config")
        names, first = group_layout(msg["members"], tp)
        log.info("joining weight-sync group epoch %d as ranks %d..%d of %d", msg["epoch"], first[self.identity],
                 first[self.identity] + tp - 1, len(names))
        t0 = time.perf_counter()
        await self.engine.collective_rpc(
            "asyncrl_init_sync", args=(host, port, first[self.identity], len(names), cfg.weight_sync.timeout_s,
                                       sync_backend(cfg), msg["epoch"], msg["ns"]))
        log.debug("joined in %.2fs", time.perf_counter() - t0)
        self.epoch = msg["epoch"]
