"""The per-step ``metrics.jsonl`` record, and the files around it.

Every key here is read by tests, benchmarks or docs (``reward_mean``, ``prompt_ids``,
``staleness_max``, the reliability counters, ...): renaming one is a user-visible change.

    rec = step_record(StepView(step=3, version=3, groups=batch, ...), counters, io_totals, stats)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asyncrl.transport.items import ScoredGroup
from learner.orchestrator.batches import staleness
from learner.orchestrator.counters import Counters

log = logging.getLogger("learner.orchestrator")


@dataclass(frozen=True)
class StepTimes:
    """What the training loop measured around one step."""

    trained_at: int  # the learner version the batch was trained at
    sync_s: float  # this step's weight sync (0 without one)
    step_s: float  # since the previous record
    time_s: float  # since the first step


@dataclass(frozen=True)
class IOTotals:
    """The I/O pump's running totals."""

    messages_dropped: int
    transport_s: float
    bytes_in: int


def step_record(step: int, version: int, groups: list[ScoredGroup], times: StepTimes, counters: Counters,
                io: IOTotals, worker_restarts: int, stats: dict[str, Any], episodes: bool = False) -> dict[str, Any]:
    """One step's record: the batch's rewards/tokens/staleness, throughput, the counters, ``stats``;
    with ``episodes`` (an ``[environment]`` run) also :func:`episode_record`."""
    rewards = [float(r) for g in groups for r in g.rewards]  # trained samples (no greedy baseline)
    samples = len(rewards)
    tokens = sum(g.trained_tokens for g in groups)  # the model's own tokens (observations are not trained)
    stale = staleness(groups, times.trained_at)
    versions = [g.policy_version for g in groups]
    step_s = max(times.step_s, 1e-9)
    c = counters
    return {
        "step": step, "policy_version": version,
        "prompt_ids": [g.prompt_id for g in groups],
        "reward_mean": sum(rewards) / samples,
        "staleness_mean": sum(stale) / len(stale), "staleness_max": max(stale),
        "samples": samples, "tokens": tokens, "samples_per_s": samples / step_s,
        "tokens_per_s": tokens / step_s, "weight_sync_s": times.sync_s, "step_s": times.step_s,
        "sample_version_min": min(versions), "sample_version_max": max(versions),
        "time_s": times.time_s, "stale_dropped": c.stale_dropped, "groups_filtered": c.groups_filtered,
        "reward_errors": sum(g.reward_errors for g in groups),
        "messages_dropped": io.messages_dropped, "duplicates_dropped": c.duplicates_dropped,
        "samples_duplicate_dropped": c.samples_duplicate_dropped,
        "samples_lost": c.samples_lost, "prompts_redispatched": c.prompts_redispatched,
        "generator_restarts": c.generator_restarts, "generators_gone": c.generators_gone,
        "sync_failures": c.sync_failures,
        "worker_restarts": worker_restarts,
        "transport_s_total": io.transport_s, "trajectory_mb_total": io.bytes_in / 2**20,
        **(episode_record(groups) if episodes else {}),
        **stats,
    }


def episode_record(groups: list[ScoredGroup]) -> dict[str, float]:
    """Multi-turn episode metrics of a batch (its trained samples): turns, tool calls, tool errors and
    tool time per episode, totals, the episode reward, the observation tokens (not trained) and the
    episodes whose tokens come from more than one weights version (a sync landed mid-episode)."""
    per = [g.episode_stats() for g in groups]
    cat = {k: np.concatenate([p[k] for p in per]).astype(np.float64) for k in per[0]} if per else {}
    n = max(1, len(cat.get("num_turns", [])))
    rewards = np.concatenate([g.rewards for g in groups]) if groups else np.zeros(0)
    trained = sum(g.trained_tokens for g in groups)
    return {
        "turns_mean": float(cat["num_turns"].sum() / n) if cat else 0.0,
        "tool_calls_mean": float(cat["num_tool_calls"].sum() / n) if cat else 0.0,
        "tool_calls_total": float(cat["num_tool_calls"].sum()) if cat else 0.0,
        "tool_errors_total": float(cat["tool_errors"].sum()) if cat else 0.0,
        "tool_time_s_mean": float(cat["tool_time_s"].sum() / n) if cat else 0.0,
        "episode_reward_mean": float(rewards.mean()) if rewards.size else 0.0,
        "observation_tokens": float(sum(int(g.response_lengths.sum()) for g in groups) - trained),
        "episodes_across_syncs": float((cat["version_span"] > 0).sum()) if cat else 0.0,
    }


def worker_restarts(run_dir: Path) -> int:
    """Processes `asyncrl up` restarted: ``"restart"`` events in ``supervisor.jsonl`` (0 when
    started by hand). The launcher writes one JSON object per line with an ``event`` field."""
    path = run_dir / "supervisor.jsonl"
    if not path.is_file():
        return 0
    n = 0
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short (the launcher died mid-write)
        if isinstance(event, dict) and event.get("event") == "restart":
            n += 1
    return n


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records of steps after ``step`` (written by a run that died after its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec_step = json.loads(line).get("step")
        except ValueError:
            continue  # a line cut short by the crash
        if not isinstance(rec_step, int) or rec_step <= step:
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep))
