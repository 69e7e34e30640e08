"""What SFT and reward-model training share: epochs of shuffled batches, each rank's share
of a batch, the LR schedule, the optimiser step, HF checkpoints kept K at a time, metrics.

    run = SupervisedRun(cfg, model, n_train=len(examples), progress={"loss": ("loss",)})
    for step, epoch, idx in run.batches(): ...; run.optimizer_step(); run.log(...)
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from asyncrl.config import LoggingSection, RunSection
from asyncrl.hardware import autocast_bf16_ok
from asyncrl.metrics import MetricsLogger
from asyncrl.train_config import TrainSection
from learner.fsdp.model import trainable
from learner.microbatch import rank_micro_batches

log = logging.getLogger("learner.supervised")


class SupervisedConfig(Protocol):
    """What the trainers read of an SFT or reward-model config (pydantic models)."""

    run: RunSection
    train: TrainSection
    logging: LoggingSection

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over data-parallel ranks (identity with one rank)."""
    if dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class SupervisedRun:
    def __init__(self, cfg: SupervisedConfig, model: torch.nn.Module, n_train: int,
                 progress: dict[str, tuple[str, ...]]) -> None:
        self.cfg, self.model, self.n_train = cfg, model, n_train
        t = cfg.train
        self.steps_per_epoch = math.ceil(n_train / t.batch_size)
        self.total_steps = min(cfg.run.max_steps, t.epochs * self.steps_per_epoch)
        self.optimizer = torch.optim.AdamW(trainable(model), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.warmup_steps, self.total_steps, t.min_lr_ratio))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.metrics: MetricsLogger | None = None
        if self.rank == 0:
            self.metrics = MetricsLogger.from_config(cfg.logging, cfg.run.dir, self.total_steps,
                                                     cfg.model_dump(mode="json"), progress_keys=progress)
        self.start = time.perf_counter()
        self.device = next(model.parameters()).device

    def batches(self) -> Iterator[tuple[int, int, list[int]]]:
        """``(step, epoch, example indices)``; a fresh seeded shuffle each epoch."""
        step = 0
        for epoch in range(self.cfg.train.epochs):
            g = torch.Generator().manual_seed(self.cfg.run.seed + epoch)
            order = torch.randperm(self.n_train, generator=g).tolist()
            for i in range(0, self.n_train, self.cfg.train.batch_size):
                step += 1
                if step > self.total_steps:
                    return
                yield step, epoch, order[i:i + self.cfg.train.batch_size]

    def micro_batches(self, idx: list[int], lengths: list[int]) -> list[list[int]]:
        """This rank's micro-batches of the examples ``idx`` (balanced by tokens across ranks);
        ``[]`` entries are zero-weight padding passes that keep FSDP2's collectives in step."""
        t = self.cfg.train
        mbs = rank_micro_batches([lengths[i] for i in idx], self.world, self.rank, max_samples=t.micro_batch_size,
                                 max_tokens=t.max_tokens_per_microbatch, packed=t.packing)
        return [[idx[j] for j in mb] for mb in mbs]

    @property
    def grad_scale(self) -> float:
        """FSDP2 averages gradients over ranks; losses normalised by global counts undo that."""
        return float(self.world)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=autocast_bf16_ok(self.cfg.train.autocast_bf16, self.device.type))

    def optimizer_step(self) -> dict[str, float]:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"grad_norm": float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm), "lr": lr}

    def log(self, record: dict[str, Any]) -> None:
        record.setdefault("time_s", time.perf_counter() - self.start)
        if self.metrics is not None:
            self.metrics.log(record)

    def due(self, step: int, every: int) -> bool:
        return step == self.total_steps or bool(every and step % every == 0)

    def checkpoint(self, step: int, save: SaveFn) -> Path | None:
        """Periodic HF export to ``checkpoints/step_N`` (last K kept) and ``checkpoints/final``."""
        t, root = self.cfg.train, self.cfg.run.dir / "checkpoints"
        out = None
        if t.checkpoint_every and step % t.checkpoint_every == 0:
            out = save(root / f"step_{step:06d}")
            if self.rank == 0:
                kept = sorted(root.glob("step_*"))
                for old in kept[:-t.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        if step == self.total_steps:
            out = save(root / "final")
            log.info("saved final checkpoint to %s", out)
        return out

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


class SaveFn(Protocol):
    def __call__(self, out: Path) -> Path: ...


class SupervisedTrainer:
    """The loop SFT and reward-model training share; subclasses set ``cfg`` and ``run`` and
    define one optimiser step, evaluation and the HF export."""

    cfg: SupervisedConfig
    run: SupervisedRun

    def train_step(self, idx: list[int]) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def export(self, out: Path) -> Path:
        raise NotImplementedError

    def train_loop(self) -> None:
        run = self.run
        rec: dict[str, Any] = {"step": 0, **self.evaluate()}
        if len(rec) > 1:
            run.log(rec)
        for step, epoch, idx in run.batches():
            t0 = time.perf_counter()
            rec = {"step": step, "epoch": epoch, **self.train_step(idx), "step_s": time.perf_counter() - t0}
            if run.due(step, self.cfg.train.eval_every):
                rec.update(self.evaluate())
            run.log(rec)
            run.checkpoint(step, self.export)

    def close(self) -> None:
        self.run.close()


def train_to_end(trainer: SupervisedTrainer) -> None:
    try:
        trainer.train_loop()
    finally:
        trainer.close()
