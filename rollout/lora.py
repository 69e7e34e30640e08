"""A generator's side of LoRA training: the engine serves the learner's adapter as a vLLM LoRA.

With ``learner.lora.rank > 0`` the engine is built with vLLM's LoRA support
(:func:`engine_lora_args`), each weight sync carries only the adapter's tensors (plus full
``modules_to_save`` tensors), and the vLLM workers install them as a new in-memory adapter whose
id is the policy version + 1 (``WeightSyncExtension.asyncrl_receive_lora``). Every request then
names that adapter: :class:`AdapterEngine` adds the current ``LoRARequest`` to each ``generate``.

Requests still running across a sync keep the adapter id they were submitted with; the workers
serve such an id with the *current* adapter (as a full sync serves them the new weights), so the
per-token policy versions stay right and no path is ever read (see ``rollout/vllm_ext.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from asyncrl.config import RunConfig

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks (0.32.0)
ADAPTER_PREFIX = "asyncrl-v"  # adapter names: asyncrl-v{version}


def vllm_max_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds ``rank``."""
    return next(r for r in VLLM_RANKS if r >= rank)


def engine_lora_args(cfg: RunConfig) -> dict[str, Any]:
    """AsyncEngineArgs fields for serving the learner's adapters ({} without LoRA).

    Two adapters per batch: right after a sync, requests of the old id (served with the new
    adapter) and of the new one share batches; four kept registered before the LRU drops one."""
    lora = cfg.learner.lora
    if not lora.enabled:
        return {}
    return {"enable_lora": True, "max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": vllm_max_rank(lora.rank),
            "lora_target_modules": list(lora.target_modules)}


def adapter_id(version: int) -> int:
    """vLLM LoRA ids must be >= 1: policy version v is adapter v + 1."""
    return version + 1


def lora_request(version: int) -> Any:
    """The ``LoRARequest`` of the adapter the workers installed for ``version``. Its path is a
    placeholder vLLM never reads: the workers registered the adapter from memory."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=f"{ADAPTER_PREFIX}{version}", lora_int_id=adapter_id(version),
                       lora_path=f"asyncrl://in-memory/{ADAPTER_PREFIX}{version}")


def vllm_adapter_config(config: dict[str, Any]) -> dict[str, Any]:
    """The learner's ``adapter_config`` as vLLM's PEFTHelper takes it: ``modules_to_save`` are not
    adapter modules in vLLM (they arrive as full tensors for the base model)."""
    return {**config, "modules_to_save": None}


class AdapterEngine:
    """The engine as request code sees it: ``generate`` carries the served adapter's request.

    Everything else (pause, collective_rpc, ...) is the engine's own."""

    def __init__(self, engine: Any, current: Callable[[], Any]) -> None:
        self._engine, self._current = engine, current

    def generate(self, prompt: Any, params: Any, request_id: str, **kwargs: Any) -> AsyncIterator[Any]:
        adapter = self._current()
        if adapter is not None:  # none before the first LoRA sync, and never without LoRA
            kwargs["lora_request"] = adapter
        return self._engine.generate(prompt, params, request_id=request_id, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
