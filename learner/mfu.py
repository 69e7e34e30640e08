"""Learner MFU and pipeline efficiency per step, by :mod:`asyncrl.flops`' convention over
:mod:`asyncrl.peak`'s measured peaks.

- ``learner_tflop``: the step's learner FLOPs (policy updates x ``ppo_epochs``, forward-only
  passes for the reference / old log-probs / teacher / critic values, critic updates);
- ``learner_mfu``: ``learner_tflop`` / ``train_s`` / (the peak of the learner's dtype on one rank's
  threads x ``learner.world_size``);
- ``gen_tflop``: the generation FLOPs of the step's trained samples (prompt prefilled once per group);
- ``gen_mfu`` and ``gen_tokens_per_s``: those FLOPs and response tokens over the time the generators spent on
  these samples (per generator, the union of the samples' request start-end intervals, summed over generators)
  and over one generator's peak (the generator dtype on its share of the host's cores, or its TP GPUs); groups
  of other steps generated at the same time share that time, so this is a floor when batches overlap;
- ``pipeline_efficiency``: achieved ``samples_per_s`` / the samples/s the FLOP limit allows for the
  same samples, i.e. ``samples_per_s`` x (learner FLOPs per sample / learner-dtype peak + generation
  FLOPs per sample / generator-dtype peak), both peaks over every core the machine has (or the GPU).
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from asyncrl.config import RunConfig
from asyncrl.flops import ModelFlops, learner_step_flops
from asyncrl.peak import run_dtypes, run_peaks
from asyncrl.transport.items import ScoredGroup
from learner.algo.advantages import needs_values
from learner.algo.ppo import old_source


class StepFlops:
    def __init__(self, cfg: RunConfig, device: str) -> None:
        import torch

        self.cfg, self.device = cfg, device
        self.model = ModelFlops.from_dir(cfg.model.path)
        lr, a = cfg.learner, cfg.algorithm
        self.learner_dtype, self.gen_dtype = run_dtypes(cfg, device)
        self.threads = torch.get_num_threads()
        self.cores = os.cpu_count() or 1
        self.critic = needs_values(a.advantage)
        self.forward_passes = (int(a.uses_reference) + int(old_source(lr, a) == "pass")
                               + int(a.distill_teacher is not None) + int(self.critic))

    @cached_property
    def peaks(self) -> dict[str, float]:
        """FLOP/s: the learner's dtype on its threads, and both dtypes on every core."""
        return run_peaks(self.cfg, self.threads, self.device)

    def record(self) -> dict[str, Any]:
        """A one-off ``metrics.jsonl`` record of the peaks every MFU here divides by."""
        return {"event": "peaks", "learner_dtype": self.learner_dtype, "gen_dtype": self.gen_dtype,
                "learner_threads": self.threads, "cores": self.cores,
                **{f"peak_{k}_gflops": v / 1e9 for k, v in self.peaks.items()}}

    def step(self, groups: list[ScoredGroup], train_s: float) -> dict[str, float]:
        lengths = [(len(g.batch.column("prompt_token_ids")[0].as_py()), int(r))
                   for g in groups for r in g.response_lengths]
        learner = learner_step_flops(self.model, lengths, epochs=self.cfg.learner.ppo_epochs,
                                     forward_passes=self.forward_passes, critic=self.critic)
        gen = sum(self.model.generate_group(len(g.batch.column("prompt_token_ids")[0].as_py()),
                                            [int(r) for r in g.response_lengths]) for g in groups)
        p = self.peaks
        gen_s = generation_seconds(groups)
        r = self.cfg.rollout
        # one generator's peak: its TP GPUs, or its share of the host's cores (all of them with one generator)
        gen_peak = p["gen_all"] * r.tensor_parallel_size if self.device == "cuda" else \
            p["gen_all"] / max(r.num_generators, 1)
        tokens = sum(int(x) for g in groups for x in g.response_lengths)
        out = {"gen_mfu": gen / gen_s / gen_peak if gen_s > 0 else float("nan"),
               "gen_tokens_per_s": tokens / gen_s if gen_s > 0 else float("nan")}
        return {**out, "learner_tflop": learner / 1e12, "gen_tflop": gen / 1e12,
                # every rank computes its share on its own threads (or GPU): the peak is world_size x one rank's
                "learner_mfu": learner / max(train_s, 1e-9) / (p["learner"] * self.cfg.learner.world_size),
                # seconds one sample costs at the FLOP limit of the whole machine
                "_peak_s_per_sample": (learner / p["learner_all"] + gen / p["gen_all"]) / max(len(lengths), 1)}

    @staticmethod
    def efficiency(record: dict[str, Any], peak_s_per_sample: float) -> float:
        return float(record["samples_per_s"]) * peak_s_per_sample


def generation_seconds(groups: list[ScoredGroup]) -> float:
    """Seconds the generators spent on ``groups``: per generator, the union of its samples' request
    intervals (concurrent requests count once), summed over generators."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for g in groups:
        b = g.batch
        for gen, t0, t1 in zip(b.column("generator_index").to_pylist(), b.column("gen_start_time").to_pylist(),
                               b.column("gen_end_time").to_pylist()):
            if t1 > t0:
                spans.setdefault(int(gen), []).append((float(t0), float(t1)))
    total = 0.0
    for ivs in spans.values():
        end = -float("inf")
        for a, b2 in sorted(ivs):
            total += max(0.0, b2 - max(a, end))
            end = max(end, b2)
    return total
