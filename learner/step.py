"""One learner step on scored groups, for every algorithm in the config's [algorithm].

Phase A (no grad): reference and teacher log-probs, critic values and the PPO old
log-probs where needed, token rewards (outcome on the last token, DAPO overlong penalty,
optional KL-in-reward and distillation term, :mod:`learner.algo.distill`), advantages over the
whole batch. Phase B: the PPO schedule of :mod:`learner.algo.ppo` (``ppo_mini_batches x
ppo_epochs`` optimiser steps), each a
micro-batched forward/backward with the chosen policy loss, off-policy correction and
optional entropy/KL-loss terms, then the optimiser step. The LR schedule steps once per
learner step (as veRL's), so warm-up counts batches.

The PPO "old" policy is the learner's weights before the step's first update. With one
optimiser step per batch those are the weights of this very forward pass (gradients
accumulate over micro-batches before the step), so ``old = logprobs.detach()`` is exact
and saves a full no-grad pass; otherwise phase A computes it. The correction weights
old/behaviour then account for generator staleness (and numeric differences between
engines): decoupled PPO's behaviour -> proximal (old) -> current. KL-in-reward uses the
behaviour log-probs, the policy that actually produced the tokens.
"""

from __future__ import annotations

import time
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
from learner.algo.advantages import get_estimator
from learner.algo.dapo import overlong_penalty
from learner.algo.distill import distill_rewards
from learner.algo.kl import AdaptiveKLController, FixedKLController, kl_penalty, reward_kl_mean
from learner.algo.logprobs import entropy_from_logits, token_logprobs
from learner.algo.losses import agg_loss, entropy_bonus, get_policy_loss, value_loss
from learner.algo.offpolicy import correction, staleness_weights
from learner.algo.ppo import Accumulator, PreparedBatch, mean_over_updates, mini_batches, old_source, scale_grads
from learner.batch import TrainBatch, build_batch
from learner.fsdp.critic import ValueModel
from learner.fsdp.memory import peak_rss_mb, rss_mb
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
    teacher: PreTrainedModel | None = None  # on-policy distillation (learner.algo.distill)

    def __post_init__(self) -> None:
        a, warmup = self.algo, self.learner.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.kl_ctrl = (AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
                        if a.kl_controller == "adaptive" else FixedKLController(a.kl_coef))
        self.device = next(self.policy.parameters()).device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.last_logprob_gap = torch.zeros(0)  # [N] of the last step (learner.samples dumps it)
        self.times: dict[str, float] = {}  # seconds of the last step by phase (stats time_*_s)

    def _chunks(self, ro: Rollouts, members: list[int]) -> list[list[int]]:
        """This rank's micro-batches of the samples ``members``; ``[]`` is a zero-weight padding
        pass (see rank_micro_batches)."""
        lr, lengths = self.learner, sample_lengths(ro)
        chunks = rank_micro_batches([lengths[i] for i in members], self.world, self.rank,
                                    max_samples=lr.micro_batch_size, max_tokens=lr.max_tokens_per_microbatch,
                                    packed=lr.packing)
        return [[members[j] for j in c] for c in chunks]

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
    def _phase_a(self, ro: Rollouts, old: bool) -> dict[str, Tensor]:
        """``[N, T]`` reference log-probs (``ref``), critic values (``values``), (``old``) policy
        log-probs and teacher log-probs (``teacher``), each absent when not needed."""
        N, T = ro.mask.shape
        models = {"ref": (self.reference, lambda m, tb: policy_forward(m, tb, self.temperature)[0]),
                  "values": (self.critic, lambda m, tb: m(tb)),
                  "old": (self.policy if old else None, lambda m, tb: policy_forward(m, tb, self.temperature)[0]),
                  "teacher": (self.teacher, lambda m, tb: policy_forward(m, tb, self.temperature)[0])}
        grids = {k: torch.zeros(N, T) for k, (m, _) in models.items() if m is not None}
        for idx in self._chunks(ro, list(range(N))) if grids else []:
            tb = self._batch(ro, idx)
            with self._autocast():
                for k, grid in grids.items():
                    model, fn = models[k]
                    out = response_view(fn(model, tb), tb, T).cpu()
                    if idx:
                        grid[idx] = out
        # each rank filled its own rows (zeros elsewhere): a sum gives every rank the whole grid
        return {k: self._all_reduce(g) for k, g in grids.items()}

    def _token_rewards(self, ro: Rollouts, ref: Tensor | None, teacher: Tensor | None,
                       stats: dict[str, float]) -> Tensor:
        a = self.algo
        scores = ro.scores * a.distill_task_weight if teacher is not None else ro.scores.clone()
        if a.overlong_buffer:
            pen = overlong_penalty(ro.lengths, self.max_new_tokens, a.overlong_buffer, a.overlong_factor)
            stats["overlong_penalty_mean"] = float(pen.mean())
            scores = scores + pen
        rewards = outcome_token_rewards(scores, ro.mask)
        if a.kl_in_reward:
            assert ref is not None
            kl = kl_penalty(ro.behaviour, ref, a.kl_reward_type) * ro.mask
            kl_mean = reward_kl_mean(kl, ro.mask, a.kl_reward_mean)
            rewards = rewards - self.kl_ctrl.value * kl
            stats.update(kl_reward=kl_mean, kl_coef=self.kl_ctrl.value)
            self.kl_ctrl.update(kl_mean, len(ro.prompt_ids))
        if teacher is not None:
            term, stats["distill_reverse_kl"] = distill_rewards(ro.behaviour, teacher, ro.mask, a.distill_coef)
            rewards = rewards + term
        return rewards

    def step(self, groups: list[pa.RecordBatch], learner_version: int) -> dict[str, Any]:
        """One learner step: ``ppo_mini_batches x ppo_epochs`` optimiser steps on ``groups``.

        Returns float metrics, plus ``staleness_hist`` (policy-version lag -> samples)."""
        a, lr = self.algo, self.learner
        ro = Rollouts.from_groups(groups, learner_version)
        stats: dict[str, Any] = {}
        self.times = dict.fromkeys(("phase_a", "forward", "backward", "optimizer"), 0.0)
        t0 = time.perf_counter()
        pre = self._phase_a(ro, old=old_source(lr, a) == "pass")
        self.times["phase_a"] = time.perf_counter() - t0
        ref, values, old = pre.get("ref"), pre.get("values"), pre.get("old")
        rewards = self._token_rewards(ro, ref, pre.get("teacher"), stats)
        adv, returns = get_estimator(a.advantage)(
            rewards, ro.mask, index=ro.index, values=values, baselines=ro.baselines, gamma=a.gamma,
            lam=a.lam, norm_by_std=a.norm_adv_by_std, eps=a.adv_eps)
        sw, skeep = staleness_weights(ro.staleness_grid(), lr.max_staleness, a.stale_policy)  # [N, T]
        N = ro.mask.shape[0]
        pb = PreparedBatch(ro, adv, returns, ref, values, old, sw, skeep, logprob_gap=torch.full((N,), float("nan")))
        minis = mini_batches(ro.index, lr.ppo_mini_batches)
        updates = [self._update(pb, members) for _ in range(lr.ppo_epochs) for members in minis]
        # each rank set its own samples' gaps (nan elsewhere): a max over ranks gathers them
        self.last_logprob_gap = self._all_reduce(torch.nan_to_num(pb.logprob_gap, nan=-torch.inf),
                                                 dist.ReduceOp.MAX)
        stats.update(mean_over_updates(updates), optimizer_steps=float(len(updates)),
                     lr=float(self.scheduler.get_last_lr()[0]))
        self.scheduler.step()
        stats["advantage_abs_mean"] = float((adv.abs() * ro.mask).sum() / ro.mask.sum().clamp(min=1))
        stats["response_len_mean"] = float(ro.lengths.mean())
        stats["staleness_hist"] = dict(Counter(int(s) for s in ro.staleness.tolist()))
        stats.update(self._memory())
        # where this rank's step time went (the rest: batching, advantages, rank exchanges)
        stats.update({f"time_{k}_s": v for k, v in self.times.items()})
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

    def _update(self, pb: PreparedBatch, members: list[int]) -> dict[str, float]:
        """One optimiser step on the samples ``members`` (a mini-batch), micro-batched. The
        policy gradient is summed over micro-batches, then divided by the loss's count over
        every micro-batch and rank (kept tokens for token-mean, else sequences)."""
        ro, seq_level = pb.ro, self.algo.loss_agg_mode != "token-mean"
        total = float(len(members) if seq_level else ro.mask[members].sum().clamp(min=1))
        acc = Accumulator()
        for idx in self._chunks(ro, members):
            share = (len(idx) if seq_level else float(ro.mask[idx].sum())) / total  # 0 for a padding pass
            part, count, kept = self._micro_step(pb, idx or [0], share, live=bool(idx))
            if idx:
                acc.add(part, share, count, kept)
        count, kept = self._all_reduce(torch.tensor([acc.count, acc.kept], dtype=torch.float64)).tolist()
        scale_grads(self.policy, 1.0 / max(count, 1.0))
        summed = self._reduce_stats({k: v for c in acc.sums.values() for k, v in c.items()}, acc.extremes)
        out = acc.finish({"count": count, "kept": kept}, summed)
        out.update(self._optimizer_step())
        return out

    def _reduce_stats(self, sums: dict[str, float], extremes: dict[str, dict[str, float]]) -> dict[str, float]:
        """Weighted sums add up, maxima and minima take the extreme, over ranks (every rank
        has the same keys)."""
        out: dict[str, float] = {}
        for values, op in ((sums, dist.ReduceOp.SUM), (extremes["max"], dist.ReduceOp.MAX),
                           (extremes["min"], dist.ReduceOp.MIN)):
            keys = sorted(values)
            if keys:
                red = self._all_reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64), op)
                out.update(zip(keys, red.tolist()))
        return out

    def _old(self, pb: PreparedBatch, idx: list[int], lp: Tensor, beh: Tensor) -> Tensor:
        if self.algo.old_logprobs == "behaviour":
            return beh
        return lp.detach() if pb.old is None else pb.old[idx].to(self.device)

    def _micro_step(self, pb: PreparedBatch, idx: list[int], share: float,
                    live: bool) -> tuple[dict[str, float], float, float]:
        """Forward/backward of one micro-batch; its metrics, the count its policy loss was
        aggregated over and its kept tokens (both 0 for a padding pass, whose gradient is
        zeroed by that count)."""
        a, ro, dev = self.algo, pb.ro, self.device
        T = ro.mask.shape[1]
        tb = self._batch(ro, idx)
        mask, beh = ro.mask[idx].to(dev), ro.behaviour[idx].to(dev)
        t0 = time.perf_counter()
        with self._autocast():
            lp_grid, ent_grid = policy_forward(self.policy, tb, self.temperature, entropy=True)
        assert ent_grid is not None  # asked for
        lp, ent = response_view(lp_grid, tb, T), response_view(ent_grid, tb, T)
        old = self._old(pb, idx, lp, beh)
        w, keep, metrics = correction(old, beh, mask, mode=a.correction, cap=a.is_cap, lower=a.is_lower,
                                      upper=a.is_upper, mis_ratio=a.mis_ratio, decoupled_filter=a.decoupled_filter)
        w, keep = w * pb.stale_weights[idx].to(dev), keep * pb.stale_keep[idx].to(dev)
        adv = pb.adv[idx].to(dev)
        loss, pm = get_policy_loss(a.loss)(lp, old, adv, keep, is_weights=w, agg_mode=a.loss_agg_mode,
                                           clip_low=a.clip_low, clip_high=a.clip_high, clip_c=a.clip_c)
        metrics.update(pm)
        n_tok = mask.sum().clamp(min=1)
        metrics["entropy"] = float((ent.detach() * mask).sum() / n_tok)
        metrics["logprob_abs_diff"] = float(((old - beh).abs() * mask).sum() / n_tok)
        if live:
            _first_gap(pb.logprob_gap, idx, lp.detach() if a.old_logprobs == "behaviour" else old, beh, mask)
        metrics["pg_loss"] = float(loss.detach())
        if a.entropy_coef:
            loss = loss - a.entropy_coef * entropy_bonus(ent, keep, a.loss_agg_mode)
        if a.kl_loss_coef:
            assert pb.ref is not None
            kl = agg_loss(kl_penalty(lp, pb.ref[idx].to(dev), a.kl_loss_type), keep, a.loss_agg_mode)
            loss = loss + a.kl_loss_coef * kl
            metrics["kl_loss"] = float(kl.detach())
        metrics["loss"] = float(loss.detach())
        # the loss is a mean over this micro-batch's kept tokens (or sequences): times that count
        # it is a sum, divided by the count over all micro-batches and ranks in _update
        kept = float(keep.sum()) if live else 0.0
        count = (kept if a.loss_agg_mode == "token-mean" else float(len(idx))) if live else 0.0
        t1 = time.perf_counter()
        self.times["forward"] += t1 - t0  # policy forward and the losses
        (loss * (count * self.world)).backward()  # x world: FSDP2 averages gradients over ranks
        self.times["backward"] += time.perf_counter() - t1
        if self.critic is not None:
            assert pb.values is not None
            with self._autocast():
                v = response_view(self.critic(tb), tb, T)
            vl, vm = value_loss(v, pb.values[idx].to(dev), pb.returns[idx].to(dev), mask, a.value_clip,
                                a.loss_agg_mode)
            (vl * (share * self.world)).backward()  # the value loss's mask is known: global shares
            metrics.update(vm, value_loss=float(vl.detach()))
        return metrics, count, kept

    def state(self) -> dict[str, Any]:
        """JSON-able trainer state besides weights and optimizer moments (for checkpoints)."""
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        return {"scheduler": sched, "kl_coef": self.kl_ctrl.value}

    def restore(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.kl_ctrl.value = float(state["kl_coef"])

    def _optimizer_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        out = {"grad_norm": _clip_and_step(self.policy, self.optimizer, self.learner.max_grad_norm)}
        if self.critic is not None and self.critic_optimizer is not None:
            out["critic_grad_norm"] = _clip_and_step(self.critic, self.critic_optimizer, self.learner.max_grad_norm)
        self.times["optimizer"] += time.perf_counter() - t0
        return out


def _first_gap(gap: Tensor, idx: list[int], learner: Tensor, behaviour: Tensor, mask: Tensor) -> None:
    """``gap[i]`` = mean (learner - behaviour) log-prob over sample ``i``'s response tokens, for the
    samples of ``idx`` not set yet (their first update: the weights before this step changed them)."""
    per = ((learner - behaviour) * mask).sum(1) / mask.sum(1).clamp(min=1)
    rows = torch.tensor(idx)
    unset = torch.isnan(gap[rows])
    gap[rows[unset]] = per.detach().float().cpu()[unset]


def _clip_and_step(model: torch.nn.Module, opt: torch.optim.Optimizer, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
