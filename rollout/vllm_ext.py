"""Runs inside each vLLM worker process (``worker_extension_cls``).

vLLM calls these methods through ``collective_rpc``; ``self`` is the vLLM worker, so
``self.model_runner`` is available. The worker joins the learner's weight-sync group
and reloads broadcast weights in place, without restarting the engine.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class WeightSyncExtension:
    """Mixed into vLLM's worker class by vLLM itself."""

    model_runner: Any

    def asyncrl_init_sync(self, host: str, port: int, rank: int, world_size: int,
                          timeout_s: float, backend: str) -> bool:
        from asyncrl.weight_sync import SyncGroup

        self._asyncrl_group = SyncGroup(host, port, rank, world_size, timeout_s=timeout_s,
                                        backend=backend)
        return True

    def asyncrl_receive_weights(self, metas: list[Any], bucket_bytes: int) -> float:
        """Receive one full broadcast and apply it; return seconds spent."""
        from asyncrl.weight_sync import receive_state

        t0 = time.perf_counter()
        metas = [(str(n), str(d), [int(s) for s in shape]) for n, d, shape in metas]
        device = getattr(self.model_runner, "device", "cpu")
        weights = receive_state(self._asyncrl_group, metas, bucket_bytes, device=device)
        self.model_runner.reload_weights(weights_iterator=weights)
        self._asyncrl_repack_tied_head()
        return time.perf_counter() - t0

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
