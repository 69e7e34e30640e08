"""One optimiser step on scored groups, for every algorithm in the config's [algorithm].

Phase A (no grad): reference log-probs and critic values where the algorithm needs them,
token rewards (outcome on the last token, DAPO overlong penalty, optional KL-in-reward),
advantages over the whole batch. Phase B: micro-batched forward/backward with the chosen
policy loss, off-policy correction and optional entropy/KL-loss terms, then the step.

The PPO "old" policy is the learner's weights before this update. With one optimiser step
per batch those are the weights of this very forward pass (gradients accumulate over
micro-batches before the step), so ``old = logprobs.detach()`` is exact and saves a full
no-grad pass; the correction weights old/behaviour then account for generator staleness
(and numeric differences between engines). KL-in-reward uses the behaviour log-probs, the
policy that actually produced the tokens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedModel

from asyncrl.config import AlgorithmSection, LearnerSection
from asyncrl.hardware import autocast_bf16_ok
from learner.advantages import get_estimator
from learner.algo import entropy_from_logits, token_logprobs
from learner.batch import TrainBatch, build_batch
from learner.critic import ValueModel
from learner.dapo import overlong_penalty
from learner.kl import AdaptiveKLController, FixedKLController, kl_penalty
from learner.losses import agg_loss, entropy_bonus, get_policy_loss, value_loss
from learner.offpolicy import correction, staleness_weights
from learner.memory import peak_rss_mb, rss_mb
from learner.microbatch import rank_micro_batches
from learner.rollouts import Rollouts, outcome_token_rewards, response_view, sample_lengths


def policy_forward(model: PreTrainedModel, tb: TrainBatch, temperature: float,
                   entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """``[b, L-1]`` log-probs of each target token at sampling ``temperature`` (and entropies).

    The generators report log-probs of the distribution they sampled from (logits / T), so
    the learner scores the same tempered distribution; otherwise every IS ratio would be off.

    Only grid columns that predict a response token go through the LM head and the
    log-softmax (``logits_to_keep``): prompt positions never need a ``[V]``-wide logit row,
    which saves most of the head's compute and memory when prompts are long. Values at the
    other columns are 0.
    """
    keep = torch.nonzero(tb.response_mask.sum(0) > 0).squeeze(1)  # [K] columns of the L-1 grid
    out = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                use_cache=False, logits_to_keep=keep)  # a cache would switch off packed-sequence masking
    logits = out.logits  # [R, K, V]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lp = _scatter(token_logprobs(logits, tb.targets[:, keep]), keep, tb.targets.shape)
    return lp, _scatter(entropy_from_logits(logits), keep, tb.targets.shape) if entropy else None


def _scatter(values: Tensor, columns: Tensor, shape: torch.Size) -> Tensor:
    """``[R, K]`` values at ``columns`` of a zero ``[R, L-1]`` grid (differentiable)."""
    return values.new_zeros(shape).index_copy(1, columns, values)


@dataclass
class Trainer:
    policy: PreTrainedModel
    optimizer: torch.optim.Optimizer
    learner: LearnerSection
    algo: AlgorithmSection
    pad_id: int
    temperature: float
    max_new_tokens: int
    reference: PreTrainedModel | None = None
    critic: ValueModel | None = None
    critic_optimizer: torch.optim.Optimizer | None = None

    def __post_init__(self) -> None:
        a, warmup = self.algo, self.learner.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.kl_ctrl = (AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
                        if a.kl_controller == "adaptive" else FixedKLController(a.kl_coef))
        self.device = next(self.policy.parameters()).device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1

    def _chunks(self, ro: Rollouts) -> list[list[int]]:
        """This rank's micro-batches; ``[]`` is a zero-weight padding pass (see rank_micro_batches)."""
        lr = self.learner
        return rank_micro_batches(sample_lengths(ro), self.world, self.rank, max_samples=lr.micro_batch_size,
                                  max_tokens=lr.max_tokens_per_microbatch, packed=lr.packing)

    def _all_reduce(self, t: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
        if self.world == 1:
            return t
        dev = t.to(self.device)  # NCCL reduces device tensors; gloo CPU ones
        dist.all_reduce(dev, op=op)
        return dev.to(t.device)

    def _batch(self, ro: Rollouts, idx: list[int]) -> TrainBatch:
        idx = idx or [0]  # a padding pass (see _chunks) computes on one sample with weight 0
        beh = [ro.behaviour[i, :len(ro.response_ids[i])].tolist() for i in idx]
        return build_batch([ro.prompt_ids[i] for i in idx], [ro.response_ids[i] for i in idx], beh,
                           self.pad_id, packed=self.learner.packing,
                           row_tokens=self.learner.pack_row_tokens).to(self.device)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=autocast_bf16_ok(self.learner.autocast_bf16, self.device.type))

    @torch.no_grad()
    def _phase_a(self, ro: Rollouts, chunks: list[list[int]]) -> tuple[Tensor | None, Tensor | None]:
        N, T = ro.mask.shape
        ref = torch.zeros(N, T) if self.reference is not None else None
        values = torch.zeros(N, T) if self.critic is not None else None
        for idx in chunks:
            if ref is None and values is None:
                break
            tb = self._batch(ro, idx)
            with self._autocast():
                if ref is not None:
                    r = response_view(policy_forward(self.reference, tb, self.temperature)[0], tb, T).cpu()
                    if idx:
                        ref[idx] = r
                if values is not None:
                    v = response_view(self.critic(tb), tb, T).cpu()
                    if idx:
                        values[idx] = v
        # each rank filled its own rows (zeros elsewhere): a sum gives every rank the whole grid
        return (None if ref is None else self._all_reduce(ref),
                None if values is None else self._all_reduce(values))

    def _token_rewards(self, ro: Rollouts, ref: Tensor | None, stats: dict[str, float]) -> Tensor:
        a = self.algo
        scores = ro.scores.clone()
        if a.overlong_buffer:
            pen = overlong_penalty(ro.lengths, self.max_new_tokens, a.overlong_buffer, a.overlong_factor)
            stats["overlong_penalty_mean"] = float(pen.mean())
            scores = scores + pen
        rewards = outcome_token_rewards(scores, ro.mask)
        if a.kl_in_reward:
            assert ref is not None
            kl = kl_penalty(ro.behaviour, ref, a.kl_reward_type) * ro.mask
            kl_mean = float(kl.sum() / ro.mask.sum().clamp(min=1))
            rewards = rewards - self.kl_ctrl.value * kl
            stats.update(kl_reward=kl_mean, kl_coef=self.kl_ctrl.value)
            self.kl_ctrl.update(kl_mean, len(ro.prompt_ids))
        return rewards

    def step(self, groups: list[pa.RecordBatch], learner_version: int) -> dict[str, float]:
        a = self.algo
        ro = Rollouts.from_groups(groups, learner_version)
        chunks = self._chunks(ro)
        stats: dict[str, float] = {}
        ref, values = self._phase_a(ro, chunks)
        rewards = self._token_rewards(ro, ref, stats)
        adv, returns = get_estimator(a.advantage)(
            rewards, ro.mask, index=ro.index, values=values, baselines=ro.baselines, gamma=a.gamma,
            lam=a.lam, norm_by_std=a.norm_adv_by_std, eps=a.adv_eps)
        sw, skeep = staleness_weights(ro.staleness, self.learner.max_staleness, a.stale_policy)
        sums: Counter[str] = Counter()
        maxes: dict[str, float] = {}
        seq_level = a.loss_agg_mode != "token-mean"
        total = float(len(ro.prompt_ids) if seq_level else ro.mask.sum().clamp(min=1))
        for idx in chunks:
            weight = (len(idx) if seq_level else float(ro.mask[idx].sum())) / total
            real = idx or [0]
            part = self._micro_step(ro, real, adv[real], returns[real], ref, values, sw[real], skeep[real], weight)
            for k, v in part.items():
                if not idx:
                    continue
                if k.endswith("_max"):
                    maxes[k] = max(maxes.get(k, v), v)
                else:
                    sums[k] += v * weight
        stats.update(self._optimizer_step())
        stats.update(self._reduce_stats(sums, maxes))
        stats["advantage_abs_mean"] = float((adv.abs() * ro.mask).sum() / ro.mask.sum().clamp(min=1))
        stats["response_len_mean"] = float(ro.lengths.mean())
        stats["staleness_hist"] = dict(Counter(int(s) for s in ro.staleness.tolist()))
        stats.update(self._memory())
        return stats

    def _memory(self) -> dict[str, float]:
        """Each rank's current and peak resident memory (MiB), as ``rss_mb_r{rank}``."""
        mine = torch.tensor([rss_mb(), peak_rss_mb()], dtype=torch.float64)
        if self.world == 1:
            every = [mine]
        else:
            every = [torch.zeros_like(mine) for _ in range(self.world)]
            dist.all_gather(every, mine, group=self._cpu_group())
        out = {}
        for r, t in enumerate(every):
            out[f"rss_mb_r{r}"], out[f"peak_rss_mb_r{r}"] = float(t[0]), float(t[1])
        return out

    def _cpu_group(self) -> dist.ProcessGroup:
        if not hasattr(self, "_gloo"):
            self._gloo = dist.new_group(backend="gloo")  # CPU tensors, also when training on NCCL
        return self._gloo

    def _reduce_stats(self, sums: Counter[str], maxes: dict[str, float]) -> dict[str, float]:
        """Weighted sums add up, maxima take the max, over ranks (every rank has the same keys)."""
        out: dict[str, float] = {}
        for values, op in ((sums, dist.ReduceOp.SUM), (maxes, dist.ReduceOp.MAX)):
            keys = sorted(values)
            if keys:
                red = self._all_reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64), op)
                out.update(zip(keys, red.tolist()))
        return out

    def _micro_step(self, ro: Rollouts, idx: list[int], adv: Tensor, returns: Tensor, ref: Tensor | None,
                    values: Tensor | None, sw: Tensor, skeep: Tensor, weight: float) -> dict[str, float]:
        a, T, dev = self.algo, ro.mask.shape[1], self.device
        tb = self._batch(ro, idx)
        mask, beh = ro.mask[idx].to(dev), ro.behaviour[idx].to(dev)
        with self._autocast():
            lp_grid, ent_grid = policy_forward(self.policy, tb, self.temperature, entropy=True)
        lp, ent = response_view(lp_grid, tb, T), response_view(ent_grid, tb, T)
        old = lp.detach()
        w, keep, metrics = correction(old, beh, mask, mode=a.correction, cap=a.is_cap, lower=a.is_lower,
                                      upper=a.is_upper)
        w, keep = w * sw.to(dev).unsqueeze(1), keep * skeep.to(dev).unsqueeze(1)
        loss, pm = get_policy_loss(a.loss)(lp, old, adv.to(dev), keep, is_weights=w, agg_mode=a.loss_agg_mode,
                                           clip_low=a.clip_low, clip_high=a.clip_high, clip_c=a.clip_c)
        metrics.update(pm)
        n_tok = mask.sum().clamp(min=1)
        metrics["entropy"] = float((ent.detach() * mask).sum() / n_tok)
        metrics["logprob_abs_diff"] = float(((old - beh).abs() * mask).sum() / n_tok)
        metrics["pg_loss"] = float(loss.detach())
        if a.entropy_coef:
            loss = loss - a.entropy_coef * entropy_bonus(ent, keep, a.loss_agg_mode)
        if a.kl_loss_coef:
            kl = agg_loss(kl_penalty(lp, ref[idx].to(dev), a.kl_loss_type), keep, a.loss_agg_mode)
            loss = loss + a.kl_loss_coef * kl
            metrics["kl_loss"] = float(kl.detach())
        metrics["loss"] = float(loss.detach())
        scale = weight * self.world  # FSDP2 averages gradients over ranks; weights are global shares
        (loss * scale).backward()
        if self.critic is not None:
            with self._autocast():
                v = response_view(self.critic(tb), tb, T)
            vl, vm = value_loss(v, values[idx].to(dev), returns.to(dev), mask, a.value_clip, a.loss_agg_mode)
            (vl * scale).backward()
            metrics.update(vm, value_loss=float(vl.detach()))
        return metrics

    def state(self) -> dict[str, Any]:
        """JSON-able trainer state besides weights and optimizer moments (for checkpoints)."""
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        return {"scheduler": sched, "kl_coef": self.kl_ctrl.value}

    def restore(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.kl_ctrl.value = float(state["kl_coef"])

    def _optimizer_step(self) -> dict[str, float]:
        lr = self.scheduler.get_last_lr()[0]
        out = {"grad_norm": _clip_and_step(self.policy, self.optimizer, self.learner.max_grad_norm), "lr": lr}
        self.scheduler.step()
        if self.critic is not None and self.critic_optimizer is not None:
            out["critic_grad_norm"] = _clip_and_step(self.critic, self.critic_optimizer, self.learner.max_grad_norm)
        return out


def _clip_and_step(model: torch.nn.Module, opt: torch.optim.Optimizer, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
