"""Runs inside each vLLM worker process (``worker_extension_cls``).

vLLM calls these methods through ``collective_rpc``; ``self`` is the vLLM worker, so
``self.model_runner`` is available. The worker joins the learner's weight-sync group
and reloads broadcast weights in place, without restarting the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from asyncrl.weight_sync import SyncGroup

# A child of vLLM's logger: vLLM configures "vllm" in its worker processes, so these lines
# reach the engine's log like vLLM's own (a logger named after this module would be silent).
log = logging.getLogger("vllm.asyncrl.weight_sync")


class WeightSyncExtension:
    """Mixed into vLLM's worker class by vLLM itself."""

    model_runner: Any  # these two come from vLLM's worker class
    reload_weights: Any
    _asyncrl_group: SyncGroup | None  # set by asyncrl_init_sync
    _asyncrl_buffers: list[torch.Tensor]  # bucket buffers kept between syncs

    def asyncrl_init_sync(self, host: str, port: int, rank: int, world_size: int,
                          timeout_s: float, backend: str, epoch: int = 0, namespace: str = "") -> bool:
        """Join the learner's weight-sync group of this membership epoch (dropping an older one).

        ``rank`` is the generator's first rank; its tensor-parallel worker t joins as ``rank + t``
        and receives every bucket whole: vLLM's own weight loaders keep this worker's shard.
        """
        from vllm.distributed import get_tensor_model_parallel_rank

        from asyncrl.weight_sync import SyncGroup, connect_store

        rank += get_tensor_model_parallel_rank()

        old = getattr(self, "_asyncrl_group", None)
        if old is not None:
            old.close()
            self._asyncrl_group = None
        store = getattr(self, "_asyncrl_store", None)
        if store is None:
            store = self._asyncrl_store = connect_store(host, port, is_master=False, timeout_s=timeout_s,
                                                        who=f"generator rank {rank}")
        self._asyncrl_group = SyncGroup(host, port, rank, world_size, timeout_s=timeout_s,
                                        backend=backend, epoch=epoch, store=store, namespace=namespace,
                                        device=getattr(self, "device", None))
        return True

    def asyncrl_receive_weights(self, metas: list[Any], bucket_bytes: int, apply: str = "auto",
                                verify: bool = False) -> dict[str, Any]:
        """Receive one full broadcast and apply it; return seconds spent and, with ``verify``, the
        SHA-256 of every bucket received (the generator checks them against the learner's before the
        engine serves again).

        Weights land in persistent bucket buffers (no fresh allocation per sync) and are copied
        straight into the live parameters when :func:`rollout.inplace.inspect_model` says that is
        correct for this model; otherwise vLLM's (much slower) layer-wise ``reload_weights``.
        """
        from asyncrl.weight_sync import receive_state

        group = getattr(self, "_asyncrl_group", None)
        if group is None:
            raise RuntimeError("asyncrl_receive_weights called before asyncrl_init_sync")
        t0 = time.perf_counter()
        metas = [(str(n), str(d), [int(s) for s in shape]) for n, d, shape in metas]
        device = getattr(self.model_runner, "device", "cpu")
        repack_s = 0.0  # in-place path: re-packing kernel handles (CPU), part of applying
        buffers = self.__dict__.setdefault("_asyncrl_buffers", [])
        digests: list[str] | None = [] if verify else None
        plan = self._asyncrl_plan(apply)
        # On a GPU the in-place copy needs only two bucket buffers, not a second copy of the model in
        # device memory; the layer-wise reload keeps tensors until a layer completes, so not there.
        ring = 2 if plan.reason is None and torch.device(device).type == "cuda" else 0
        timed = _Timed(receive_state(group, metas, bucket_bytes, device=device, buffers=buffers,
                                     digests=digests, ring=ring))
        try:
            if plan.reason is None:
                from rollout.inplace import apply_inplace

                repack_s = apply_inplace(self.model_runner.get_model(), plan, timed)
                self._asyncrl_check_refresh(plan)
            else:
                # the worker's method (not the model runner's): it enters vLLM's config context, which
                # weight loaders may read (vllm/v1/worker/gpu_worker.py Worker.reload_weights, 0.32.0)
                self.reload_weights(weights_iterator=timed)
                self._asyncrl_repack_tied_head()
        except BaseException:
            # Receives of the failed sync may still be pending in gloo and land later: never let
            # them write into buffers the next sync uses.
            self._asyncrl_buffers = []
            raise
        total = time.perf_counter() - t0
        self._asyncrl_last = {"path": "in-place" if plan.reason is None else "reload_weights",
                              "total_s": total, "receive_s": timed.seconds, "apply_s": total - timed.seconds,
                              "repack_s": repack_s, "repacked_linear": len(plan.staged),
                              "repacked_embedding": len(plan.repack)}
        log.info("weights applied (%s): %.3fs, of which receiving %.3fs, re-packing %.3fs",
                 self._asyncrl_last["path"], total, timed.seconds, repack_s)
        return {"seconds": total, "digests": digests}

    def asyncrl_receive_lora(self, metas: list[Any], bucket_bytes: int, config: dict[str, Any], lora_id: int,
                             verify: bool = False) -> dict[str, Any]:
        """Receive one adapter-only broadcast (LoRA training) and serve it as adapter ``lora_id``.

        Adapter tensors become an in-memory vLLM ``LoRAModel`` registered with the worker's LoRA
        manager (no disk); full tensors (``modules_to_save``: norms) are copied into the base model
        in place. Every older adapter is removed; a request still carrying an older id is served
        with this adapter (:meth:`_asyncrl_load_adapter`). Each TP worker receives whole tensors:
        vLLM's LoRA layers keep this worker's slice (``set_lora``).
        """
        from asyncrl.weight_sync import receive_state

        group = getattr(self, "_asyncrl_group", None)
        if group is None:
            raise RuntimeError("asyncrl_receive_lora called before asyncrl_init_sync")
        t0 = time.perf_counter()
        metas = [(str(n), str(d), [int(s) for s in shape]) for n, d, shape in metas]
        buffers = self.__dict__.setdefault("_asyncrl_buffers", [])
        digests: list[str] | None = [] if verify else None
        adapter: dict[str, torch.Tensor] = {}
        full: list[tuple[str, torch.Tensor]] = []
        device = getattr(self.model_runner, "device", "cpu")  # NCCL receives into device buffers
        timed = _Timed(receive_state(group, metas, bucket_bytes, device=device, buffers=buffers, digests=digests))
        try:
            for name, t in timed:  # CPU copies (the buffers are reused): vLLM builds adapters on CPU too
                if ".lora_" in name:
                    adapter[name] = t.to("cpu", copy=True)
                else:
                    full.append((name, t))
            lora = self._asyncrl_build_lora(lora_id, adapter, config)
        except BaseException:
            self._asyncrl_buffers = []
            raise
        if full:
            self._asyncrl_load_full(full)
        manager = self.model_runner.lora_manager
        self._asyncrl_adapter = (adapter, config)
        if not getattr(self, "_asyncrl_hooked", False):  # serve older ids with the current adapter
            from rollout.lora_ops import install

            original = manager._load_adapter
            manager._load_adapter = lambda req: self._asyncrl_load_adapter(req, original)
            self._asyncrl_hooked = True
            if install(manager._adapter_manager):
                log.info("LoRA on CPU: grouped per-adapter matmuls instead of vLLM's per-token weight gather")
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed

        for old in manager.list_adapters():
            manager.remove_adapter(old)
        with gpu_sync_allowed():  # as vLLM's own add_adapter (a no-op unless its sync debugging is on)
            manager._adapter_manager.add_adapter(lora)
        total = time.perf_counter() - t0
        nbytes = sum(t.numel() * t.element_size() for t in adapter.values()) + sum(
            t.numel() * t.element_size() for _, t in full)
        self._asyncrl_last = {"path": "lora", "total_s": total, "receive_s": timed.seconds,
                              "apply_s": total - timed.seconds, "bytes": nbytes, "adapter_id": lora_id}
        log.info("LoRA adapter %d installed (%d tensors, %d full, %.1f MiB): %.3fs, of which receiving %.3fs",
                 lora_id, len(adapter), len(full), nbytes / 2**20, total, timed.seconds)
        return {"seconds": total, "digests": digests}

    def _asyncrl_build_lora(self, lora_id: int, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Any:
        """A vLLM ``LoRAModel`` from in-memory tensors (what ``_load_adapter`` builds from a directory)."""
        from vllm.lora.lora_model import LoRAModel
        from vllm.lora.peft_helper import PEFTHelper

        from rollout.lora import vllm_adapter_config

        manager = self.model_runner.lora_manager
        helper = PEFTHelper.from_dict({**vllm_adapter_config(config),
                                       "vllm_max_position_embeddings": manager.max_position_embeddings})
        helper.validate_legal(manager.lora_config)
        model = manager._adapter_manager.model
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        return LoRAModel.from_lora_tensors(
            lora_id, {k: v.clone() for k, v in tensors.items()}, helper, device="cpu",
            dtype=manager.lora_config.lora_dtype, model_vocab_size=manager.vocab_size,
            weights_mapper=mapper.get_rename_mapper() if mapper is not None else None,
            skip_prefixes=getattr(model, "lora_skip_prefixes", None))

    def _asyncrl_load_adapter(self, request: Any, original: Any) -> Any:
        """The LoRA manager's loader for an id it does not hold: an asyncrl id (a request submitted
        before the last sync, or an adapter the LRU dropped) gets the current adapter; others load
        as vLLM would."""
        from rollout.lora import ADAPTER_PREFIX

        current = getattr(self, "_asyncrl_adapter", None)
        if current is None or not str(request.lora_name).startswith(ADAPTER_PREFIX):
            return original(request)
        return self._asyncrl_build_lora(request.lora_int_id, *current)

    def _asyncrl_load_full(self, items: list[tuple[str, torch.Tensor]]) -> None:
        """Copy ``modules_to_save`` tensors (norm weights: never pre-packed) into the live model."""
        model = self.model_runner.get_model()
        with torch.no_grad():
            loaded = set(model.load_weights(iter(items)))
        if len(loaded) < len(items):
            raise RuntimeError(f"LoRA sync: {len(items)} full tensor(s) sent, {len(loaded)} loaded "
                               f"({sorted(n for n, _ in items)[:5]})")

    def asyncrl_last_sync(self) -> dict[str, Any]:
        """Path and timing of the last applied sync (for tests and benchmarks)."""
        return dict(getattr(self, "_asyncrl_last", {}))

    def _asyncrl_plan(self, apply: str) -> Any:
        """Decide once (the model's layout does not change) which apply path is correct; log it.

        ``apply`` is ``rollout.weight_apply``: ``reload`` forces vLLM's reload_weights; ``inplace``
        insists on the fast path and fails loudly (before touching a weight) where the layout check
        says it would be wrong; ``auto`` takes the fast path where the check passes.
        """
        plan = getattr(self, "_asyncrl_plan_cached", None)
        if plan is None:
            from rollout.inplace import InplacePlan, inspect_model

            model_config = getattr(self.model_runner, "model_config", None)
            if apply == "reload":
                plan = InplacePlan("forced by rollout.weight_apply = 'reload'")
            else:
                plan = inspect_model(self.model_runner.get_model(), getattr(model_config, "quantization", None))
            if apply == "inplace" and plan.reason is not None:
                raise RuntimeError(f"rollout.weight_apply = 'inplace' but an in-place copy would be wrong for "
                                   f"this model here: {plan.reason} (use 'auto' or 'reload')")
            self._asyncrl_plan_cached = plan
            if plan.reason is None:
                log.info("weight sync: in-place copy into live parameters (%d packed linear layer(s) "
                         "re-dispatched and %d layer(s) re-packed after it)", len(plan.staged), len(plan.repack))
            else:
                log.warning("weight sync: falling back to vLLM reload_weights: %s", plan.reason)
        return plan

    def _asyncrl_check_refresh(self, plan: Any) -> None:
        """After the first in-place sync: every re-packed layer must compute with the weights just
        copied in. If not, this sync fails (the engine stays paused, the learner re-sends at once)
        and every later sync takes vLLM's reload_weights."""
        if plan.verified:
            return
        from rollout.inplace import InplacePlan, verify_refresh

        why = verify_refresh(plan)
        if why is None:
            plan.verified = True
            return
        self._asyncrl_plan_cached = InplacePlan(f"in-place check after the first sync failed: {why}")
        log.warning("weight sync: %s; falling back to vLLM reload_weights from the next sync", why)
        raise RuntimeError(f"in-place weight sync did not take effect: {why}")

    def _asyncrl_repack_tied_head(self) -> None:
        # On the CPU backend lm_head keeps its own prepacked copy of the tied embedding;
        # without re-packing, logits would still come from the old weights.
        model = self.model_runner.get_model()
        cfg = getattr(model, "config", None)
        head = getattr(model, "lm_head", None)
        if head is None or not getattr(cfg, "tie_word_embeddings", False):
            return
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)


class _Timed:
    """Wraps the receiving iterator and sums the seconds spent inside it (waiting on broadcasts)."""

    def __init__(self, it: Iterator[tuple[str, Any]]) -> None:
        self.it, self.seconds = it, 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> tuple[str, Any]:
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - t
