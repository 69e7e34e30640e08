"""FLOP convention (asyncrl/flops.py), measured peaks (asyncrl/peak.py) and the per-step MFU and
pipeline efficiency of a real run (learner/mfu.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asyncrl.flops import ModelFlops, learner_step_flops
from tests.conftest import SharedRun
from tests.e2e import read_metrics

SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "intermediate_size": 1536, "vocab_size": 49152, "hidden_act": "silu", "tie_word_embeddings": True,
           "model_type": "llama", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}


def test_parameter_counts_match_a_real_model() -> None:
    """The config arithmetic against transformers' own parameter count (a meta-device model)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2))
    embed = model.get_input_embeddings().weight.numel()
    m = ModelFlops.from_config(SMOLLM2)
    assert m.non_embedding == sum(p.numel() for p in model.parameters()) - embed  # tied head: no second matrix
    assert m.head == embed and m.layers == 30 and m.d_attn == 576


def test_the_issues_worked_example() -> None:
    """Issue 18: 32 samples of ~46 prompt + 21 response tokens on SmolLM2-135M ~ 1.5 TFLOP."""
    flops = learner_step_flops(ModelFlops.from_config(SMOLLM2), [(46, 21)] * 32)
    assert flops == pytest.approx(1.5e12, rel=0.02)


def test_attention_is_the_sum_over_positions() -> None:
    m = ModelFlops(non_embedding=0, head=0, layers=2, d_attn=8)
    brute = sum(4 * 2 * 8 * pos for pos in range(1, 11))  # positions 1..10 attend to 1..10 tokens
    assert m.attention(10) == brute
    assert m.attention(4, context=6) == sum(4 * 2 * 8 * pos for pos in range(7, 11))
    # generation: prefill once per group, then each response after the prompt
    m2 = ModelFlops(non_embedding=100, head=10, layers=2, d_attn=8)
    assert m2.generate_group(6, [4, 2]) == 2 * 100 * 6 + m2.attention(6) + 2 * 110 * 4 + m2.attention(4, 6) \
        + 2 * 110 * 2 + m2.attention(2, 6)
    # forward-only passes cost a third of an update; epochs multiply updates
    one = learner_step_flops(m2, [(6, 4)])
    assert learner_step_flops(m2, [(6, 4)], epochs=2, forward_passes=3) == pytest.approx(2 * one + one)


def test_peak_is_measured_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncrl import peak

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured: list[float] = []
    real = peak.measure

    def counting(*a: object, **k: object) -> float:
        measured.append(real("float32", 1, "cpu", 0.05, 256))
        return measured[-1]

    monkeypatch.setattr(peak, "measure", counting)
    first = peak.peak("float32", 1)
    assert first > 1e8 and peak.peak("float32", 1) == first and len(measured) == 1  # > 0.1 GFLOP/s, cached
    assert list(json.loads((tmp_path / "asyncrl" / "peak.json").read_text()).values()) == [first]


@pytest.mark.slow
def test_run_records_mfu_and_pipeline_efficiency(tiny_run: SharedRun) -> None:
    steps = [r for r in read_metrics(tiny_run.run_dir) if "reward_mean" in r]
    assert steps and all(0 < r["learner_mfu"] < 1 and r["learner_tflop"] > 0 and r["gen_tflop"] > 0
                         and 0 < r["pipeline_efficiency"] < 1 and 0 < r["gen_mfu"] < 1 and r["gen_tokens_per_s"] > 0
                         for r in steps)
    # learner FLOPs follow the batch: more tokens, more FLOPs
    by_tokens = sorted(steps, key=lambda r: r["tokens"])
    assert by_tokens[0]["learner_tflop"] <= by_tokens[-1]["learner_tflop"]


def test_generation_seconds_count_concurrent_requests_once() -> None:
    from asyncrl import schema
    from asyncrl.transport.items import ScoredGroup
    from learner.mfu import generation_seconds

    def group(gen: int, spans: list[tuple[float, float]]) -> ScoredGroup:
        rows = [{"prompt_id": 0, "group_id": 0, "sample_index": i, "split": "train", "data_source": "t",
                 "ground_truth": "", "prompt_token_ids": [1], "response_token_ids": [2], "behaviour_logprobs": [-1.0],
                 "response_text": "", "finish_reason": "stop", "policy_version": 0, "policy_version_end": 0,
                 "generator_index": gen, "gen_start_time": a, "gen_end_time": b, "reward": 0.0}
                for i, (a, b) in enumerate(spans)]
        return ScoredGroup(schema.make_batch(rows))

    # generator 0: [0, 4] and [2, 6] overlap -> 6 s, plus [10, 11] in another group; generator 1: 3 s
    groups = [group(0, [(0, 4), (2, 6)]), group(0, [(10, 11)]), group(1, [(5, 8)])]
    assert generation_seconds(groups) == 6 + 1 + 3
