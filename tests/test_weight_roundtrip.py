"""After a weight broadcast, a live vLLM engine must equal a fresh engine on the same weights.

A check that only shows "the output changed" cannot catch a half-applied update (e.g. the
tied lm_head still holding its old packed copy on CPU), so this compares greedy tokens and
sampled-token log-probs against a fresh engine loaded from the learner's exported weights.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from asyncrl.config import validate_config
from asyncrl.weight_sync import SyncGroup, send_state, tensor_metas
from tests.conftest import free_port

pytestmark = pytest.mark.slow

PROMPTS = [[2, 89, 87, 73, 86, 99, 59, 76, 69, 88], [2, 69, 87, 87, 77, 87, 88], [40, 41, 42, 43]]


def _cfg(model: Path, port: int):
    return validate_config({
        "model": {"path": str(model)}, "data": {"train": "unused.parquet", "max_prompt_tokens": 64},
        "rollout": {"dtype": "float32", "max_new_tokens": 24, "n": 2},
        "transport": {"weight_sync": f"127.0.0.1:{port}"}, "learner": {"sync_timeout_s": 120}})


async def _greedy(engine, tag: str) -> list[tuple[list[int], list[float]]]:
    from vllm import SamplingParams
    from rollout.worker import sampled_logprobs

    params = SamplingParams(temperature=0.0, max_tokens=24, logprobs=0, ignore_eos=True)
    out = []
    for i, ids in enumerate(PROMPTS):
        final = None
        async for o in engine.generate({"prompt_token_ids": ids}, params, request_id=f"{tag}-{i}"):
            final = o
        comp = final.outputs[0]
        out.append((list(comp.token_ids), sampled_logprobs(list(comp.token_ids), comp.logprobs)))
    return out


def _perturbed_model(src: Path, dst: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # includes the tied embedding / lm_head
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return model


def test_broadcast_equals_fresh_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learner.model import broadcast_items
    from rollout.worker import build_engine

    port = free_port()
    cfg = _cfg(tiny_model_dir, port)
    updated = _perturbed_model(tiny_model_dir, tmp_path / "updated")
    items = broadcast_items(updated, dict(updated.state_dict()))
    assert not any(k == "lm_head.weight" for k, _ in items)  # tied: vLLM re-ties it itself

    async def scenario():
        live = build_engine(cfg, seed=0)
        before = await _greedy(live, "before")
        group: dict[str, SyncGroup] = {}
        t = threading.Thread(target=lambda: group.setdefault(
            "g", SyncGroup("127.0.0.1", port, 0, 2, timeout_s=120)))
        t.start()
        await live.collective_rpc("asyncrl_init_sync", args=("127.0.0.1", port, 1, 2, 120.0, "gloo"))
        t.join()
        metas = tensor_metas(items, "float32")
        sender = threading.Thread(target=send_state, args=(group["g"], items, "float32", 1 << 16))
        sender.start()  # small buckets: many broadcasts, exercising the bucket plan
        await live.pause_generation(mode="keep", clear_cache=False)
        await live.collective_rpc("asyncrl_receive_weights", args=([list(m) for m in metas], 1 << 16))
        await live.reset_prefix_cache(reset_running_requests=True)
        await live.resume_generation()
        sender.join()
        after = await _greedy(live, "after")
        live.shutdown()
        del live  # finalise now, not at interpreter exit when vLLM's module globals are gone
        fresh_cfg = cfg.model_copy(deep=True)
        fresh_cfg.model.path = tmp_path / "updated"
        fresh = build_engine(fresh_cfg, seed=0)
        ref = await _greedy(fresh, "fresh")
        fresh.shutdown()
        del fresh
        return before, after, ref

    before, after, ref = asyncio.run(scenario())
    assert [a[0] for a in after] != [b[0] for b in before], "update had no effect at all"
    for (toks, lps), (ref_toks, ref_lps) in zip(after, ref):
        assert toks == ref_toks
        assert max(abs(a - b) for a, b in zip(lps, ref_lps)) < 1e-4
