"""One optimiser step on a list of scored groups: GRPO advantages, PPO-clip with TIS."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch
from torch import Tensor
from transformers import PreTrainedModel

from asyncrl.config import LearnerSection
from learner.algo import grpo_advantages, policy_loss, token_logprobs
from learner.batch import TrainBatch, build_batch


@dataclass
class Rollouts:
    """Scored groups flattened to per-sample lists (row order = group, then sample)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    behaviour: list[list[float]]
    rewards: Tensor  # [G, n]

    @classmethod
    def from_groups(cls, groups: list[pa.RecordBatch]) -> "Rollouts":
        cols = {k: [] for k in ("prompt_token_ids", "response_token_ids", "behaviour_logprobs")}
        rewards = []
        for g in groups:
            for k in cols:
                cols[k].extend(g.column(k).to_pylist())
            rewards.append([0.0 if r is None else float(r) for r in g.column("reward").to_pylist()])
        if len({len(r) for r in rewards}) != 1:
            raise ValueError("groups of different sizes in one batch")
        return cls(cols["prompt_token_ids"], cols["response_token_ids"], cols["behaviour_logprobs"],
                   torch.tensor(rewards, dtype=torch.float32))


def sequence_logprobs(model: PreTrainedModel, tb: TrainBatch, temperature: float = 1.0) -> Tensor:
    """``[B, L-1]`` log-probs of each target token under ``model`` at sampling ``temperature``.

    The generators report log-probs of the distribution they sampled from (logits / T), so
    the learner scores the same tempered distribution; otherwise every IS ratio would be off.
    """
    out = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids)
    logits = out.logits[:, :-1]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return token_logprobs(logits, tb.targets)


def train_step(model: PreTrainedModel, optimizer: torch.optim.Optimizer, groups: list[pa.RecordBatch],
               cfg: LearnerSection, pad_id: int, temperature: float = 1.0) -> dict[str, float]:
    """One clipped policy-gradient update over micro-batches.

    The PPO "old" policy is the learner's current weights before this update. With one
    optimiser step per batch those equal the weights of this very forward pass (gradients
    accumulate over micro-batches before the step), so ``old = logprobs.detach()`` is
    exact and saves a full no-grad forward pass. The TIS weight old/behaviour then
    corrects for generator staleness and for numeric differences between engines.
    """
    ro = Rollouts.from_groups(groups)
    adv = grpo_advantages(ro.rewards, eps=cfg.adv_eps).flatten()
    device = next(model.parameters()).device
    total_tokens = float(max(1, sum(len(r) for r in ro.response_ids)))
    sums: dict[str, float] = {}
    loss_total = 0.0
    for idx in micro_batches(ro, cfg.micro_batch_size):
        part = build_batch([ro.prompt_ids[i] for i in idx], [ro.response_ids[i] for i in idx],
                           [ro.behaviour[i] for i in idx], pad_id).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            lp = sequence_logprobs(model, part, temperature)
        loss, stats = policy_loss(lp, lp.detach(), part.behaviour_logprobs, adv[idx].to(device),
                                  part.response_mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                  tis_cap=cfg.tis_cap)
        weight = float(part.response_mask.sum()) / total_tokens
        (loss * weight).backward()
        loss_total += float(loss) * weight
        for k, v in stats.items():
            sums[k] = max(sums.get(k, v), v) if k.endswith("_max") else sums.get(k, 0.0) + v * weight
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    lens = [len(r) for r in ro.response_ids]
    return {"loss": loss_total, "grad_norm": float(gn), "advantage_abs_mean": float(adv.abs().mean()),
            "response_len_mean": sum(lens) / len(lens), **sums}


def micro_batches(ro: Rollouts, size: int) -> list[list[int]]:
    """Sample indices in chunks of ``size``, sorted by length so each chunk pads little."""
    order = sorted(range(len(ro.prompt_ids)), key=lambda i: len(ro.prompt_ids[i]) + len(ro.response_ids[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]
