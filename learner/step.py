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


def _slice(tb: TrainBatch, lo: int, hi: int) -> TrainBatch:
    return TrainBatch(**{k: v[lo:hi] for k, v in vars(tb).items()})


def train_step(model: PreTrainedModel, optimizer: torch.optim.Optimizer, groups: list[pa.RecordBatch],
               cfg: LearnerSection, pad_id: int, temperature: float = 1.0) -> dict[str, float]:
    """Recompute old log-probs, then one clipped policy-gradient update over micro-batches."""
    ro = Rollouts.from_groups(groups)
    adv = grpo_advantages(ro.rewards, eps=cfg.adv_eps).flatten()
    device = next(model.parameters()).device
    tb = build_batch(ro.prompt_ids, ro.response_ids, ro.behaviour, pad_id).to(device)
    n, mb = tb.input_ids.shape[0], cfg.micro_batch_size
    total_tokens = float(tb.response_mask.sum().clamp(min=1.0))
    with torch.no_grad():
        old = torch.cat([sequence_logprobs(model, _slice(tb, i, i + mb), temperature) for i in range(0, n, mb)])
    sums: dict[str, float] = {}
    loss_total = 0.0
    for i in range(0, n, mb):
        part = _slice(tb, i, i + mb)
        lp = sequence_logprobs(model, part, temperature)
        loss, stats = policy_loss(lp, old[i:i + mb], part.behaviour_logprobs, adv[i:i + mb].to(device),
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
    return {"loss": loss_total, "grad_norm": float(gn), "advantage_abs_mean": float(adv.abs().mean()),
            "response_len_mean": float(tb.response_lens.float().mean()), **sums}
