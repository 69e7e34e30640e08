"""The learner process: dispatch prompts, train on scored groups, broadcast weights.

    cfg = load_config("configs/tiny_cpu.toml"); Learner(cfg).run()
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from asyncrl import messages
from asyncrl.config import RunConfig, dump_config
from asyncrl.data.dataset import load_prompts
from asyncrl.metrics import MetricsLogger
from learner.algo.advantages import needs_baseline, needs_values
from learner.fsdp.critic import load_critic
from learner.algo.dapo import groups_with_signal
from learner.algo.distill import load_teacher
from learner.orchestrator.dispatcher import Dispatcher, Sampling, TokenizedPrompt
from learner.orchestrator.io import LearnerIO
from learner.fsdp.model import init_distributed, load_policy, save_hf
from learner.fsdp.checkpoint import Checkpointer, CheckpointError
from learner.fsdp.ranks import RankChannel, parse_step, step_payload
from learner.step import Trainer
from learner.fsdp.stream_sync import SyncSource, follow_sync, sync_source
from learner.orchestrator.syncer import WeightSyncer

log = logging.getLogger("learner")
_CHANGED = object()  # a wait predicate's answer: the generators' membership changed


def tokenize_prompts(path: Any, tokenizer: Any, max_tokens: int) -> tuple[list[TokenizedPrompt], int]:
    """Chat-templated prompt token ids; prompts longer than ``max_tokens`` are dropped (counted)."""
    out, dropped = [], 0
    for row in load_prompts(path):
        ids = tokenizer.apply_chat_template(row.messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers may return a BatchEncoding
            ids = ids["input_ids"]
        if len(ids) > max_tokens:
            dropped += 1
            continue
        out.append(TokenizedPrompt(row.prompt_id, [int(i) for i in ids], row.data_source, row.ground_truth))
    return out, dropped


class LearnerRank:
    """What every learner rank holds: its shards of the policy (and reference/critic), the
    trainer, and the channel on which rank 0 leads. Ranks 1..K-1 run :meth:`follow`."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.run.seed)
        self.model, self.tokenizer = load_policy(cfg.model.path, cfg.model.learner_dtype, cfg.learner)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.trainer = self._build_trainer()
        self.ranks = RankChannel(timeout_s=cfg.learner.wait_timeout_s + cfg.weight_sync.timeout_s)
        self.checkpointer = Checkpointer(cfg.run.dir / "checkpoints", cfg.learner.keep_checkpoints)
        self.resumed: dict[str, Any] | None = self._resume() if cfg.run.resume else None

    def modules(self) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
        t = self.trainer
        out = {"policy": (t.policy, t.optimizer)}
        if t.critic is not None and t.critic_optimizer is not None:
            out["critic"] = (t.critic, t.critic_optimizer)
        return out

    def _resume(self) -> dict[str, Any]:
        path = self.checkpointer.latest()
        if path is None:
            raise CheckpointError(f"run.resume: no complete checkpoint under {self.checkpointer.root} "
                                  f"(set learner.checkpoint_every to write them)")
        state = self.checkpointer.load(path, self.modules())
        self.trainer.restore(state["trainer"])
        log.info("resumed from %s: step %d, policy version %d", path, state["step"], state["version"])
        return state

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        """A collective: rank 0 passes the run state, the other ranks an empty dict."""
        return self.checkpointer.save(step, self.modules(), {**state, "trainer": self.trainer.state()},
                                      export=lambda out: save_hf(self.model, self.tokenizer, out))

    def _build_trainer(self) -> Trainer:
        cfg, lr, a = self.cfg, self.cfg.learner, self.cfg.algorithm
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr.lr, betas=lr.betas, weight_decay=lr.weight_decay)
        reference = critic = critic_opt = None
        if a.uses_reference:  # a frozen copy of the initial policy
            reference, _ = load_policy(cfg.model.path, cfg.model.learner_dtype, cfg.learner)
            reference.requires_grad_(False).eval()
        if needs_values(a.advantage):
            critic = load_critic(cfg.model.path, cfg.model.learner_dtype, cfg.learner)
            critic_opt = torch.optim.AdamW(critic.parameters(), lr=a.critic_lr, betas=lr.betas)
        return Trainer(self.model, opt, lr, a, self.pad_id, cfg.sampling.temperature, cfg.sampling.max_new_tokens,
                       reference=reference, critic=critic, critic_optimizer=critic_opt, teacher=load_teacher(cfg))

    def follow(self) -> None:
        """Ranks 1..K-1: do what rank 0 says until it says stop."""
        while True:
            command, payload = self.ranks.recv()
            if command == "step":
                groups, version = parse_step(payload)
                self.trainer.step(groups, version)
            elif command == "sync":
                # rank 0 streams the gathered parameters bucket by bucket, in the generators' dtype
                # (rank 0 resolves it: learner nodes may have other CPUs than node 0)
                follow_sync(self.model, payload.decode())
            elif command == "save":
                save_hf(self.model, self.tokenizer, Path(payload.decode()))
            elif command == "checkpoint":
                self.save_checkpoint(int(payload.decode()), {})
            elif command == "stop":
                return


class Learner(LearnerRank):
    """Rank 0: dispatches prompts, trains, broadcasts weights, validates, logs."""

    def __init__(self, cfg: RunConfig) -> None:
        cfg.run.dir.mkdir(parents=True, exist_ok=True)
        super().__init__(cfg)
        train, dropped = tokenize_prompts(cfg.data.train, self.tokenizer, cfg.data.max_prompt_tokens)
        log.info("%d training prompts (%d dropped as longer than %d tokens)", len(train), dropped,
                 cfg.data.max_prompt_tokens)
        self.val_prompts: list[TokenizedPrompt] = []
        if cfg.data.test is not None:
            val, _ = tokenize_prompts(cfg.data.test, self.tokenizer, cfg.data.max_prompt_tokens)
            self.val_prompts = val[:cfg.learner.val_prompts]
        s, lr = cfg.sampling, cfg.learner
        a = cfg.algorithm
        sampling = Sampling(s.n, s.temperature, s.max_new_tokens, greedy_baseline=needs_baseline(a.advantage))
        self.dispatcher = Dispatcher(train, prompts_per_step=lr.prompts_per_step, max_staleness=lr.max_staleness,
                                     sampling=sampling, seed=cfg.run.seed, shuffle=cfg.data.shuffle)
        self.io = LearnerIO(cfg, self.dispatcher)
        self.version = self.start_step = 0
        self.stale_dropped = 0
        self.groups_filtered = 0
        self.syncer: WeightSyncer | None = None
        self.weights: SyncSource | None = None  # where the synced bytes come from (keeps its buffers)
        self._sync_failures_before = 0  # sync retries before the checkpoint this run resumed from
        if self.resumed is not None:
            st = self.resumed
            self.version, self.start_step = int(st["version"]), int(st["step"])
            self.stale_dropped, self.groups_filtered = int(st["stale_dropped"]), int(st["groups_filtered"])
            self.dispatcher.restore(st["dispatcher"], self.version)
            self._restore_counters(st.get("counters", {}))
            truncate_metrics(cfg.run.dir / "metrics.jsonl", self.start_step)
        lg = cfg.logging
        self.metrics = MetricsLogger(cfg.run.dir, cfg.run.max_steps, console=lg.console, wandb_enabled=lg.wandb,
                                     wandb_project=lg.wandb_project, wandb_mode=lg.wandb_mode,
                                     config=dump_config(cfg))

    def connect_generators(self) -> None:
        """Wait for every generator's hello, then send them the current weights (the resumed ones,
        or the initial ones, which forms the first weight-sync group): a generator gets no prompt
        before it serves the learner's weights."""
        cfg = self.cfg
        n = cfg.rollout.num_generators
        self.syncer = WeightSyncer(cfg, self.io)
        self.weights = sync_source(self.model, self.ranks)
        log.info("waiting for %d generator(s); weight-sync store at %s", n, cfg.weight_sync.address)
        self.io.wait_for(lambda: True if len(self.io.members) >= n else None,
                         cfg.weight_sync.timeout_s, f"hello from all {n} generator(s)")
        secs = self.sync_weights()
        log.info("all %d generator(s) connected and serving weights v%d (%.2fs)", n, self.version, secs)

    def run(self) -> None:
        cfg = self.cfg
        self.io.start()
        try:
            self.connect_generators()
            start = last = time.perf_counter()
            if self.resumed is None:
                self._log_validation(step=0, time_s=0.0)
            else:  # connect_generators sent them the resumed policy before any prompt
                log.info("generators serve the resumed weights v%d; continuing at step %d", self.version,
                         self.start_step + 1)
            for step in range(self.start_step + 1, cfg.run.max_steps + 1):
                t_wait = time.perf_counter()
                groups = self._next_batch()
                t_train = time.perf_counter()
                staleness = [self.version - int(g.column("policy_version")[0].as_py()) for g in groups]
                self.ranks.send("step", step_payload(groups, self.version))
                stats = self.trainer.step(groups, self.version)
                stats["wait_s"], stats["train_s"] = t_train - t_wait, time.perf_counter() - t_train
                self._settle(groups)
                self.version += 1
                sync_s = self.sync_weights() if self.version % cfg.learner.sync_every == 0 else 0.0
                now = time.perf_counter()
                rec = self._record(step, groups, staleness, stats, sync_s, now - last, now - start)
                last = now
                if step == cfg.run.max_steps or (cfg.learner.val_every and step % cfg.learner.val_every == 0):
                    rec.update(self.validate())
                self.metrics.log(rec)
                every = cfg.learner.checkpoint_every
                if every and (step % every == 0 or step == cfg.run.max_steps):
                    self._checkpoint(step)
            if cfg.learner.save_final:
                out = cfg.run.dir / "checkpoints" / "final"
                self.ranks.send("save", str(out).encode())
                save_hf(self.model, self.tokenizer, out)
                log.info("saved final checkpoint to %s", out)
            self.ranks.send("stop")
            self.io.send_all(messages.encode("stop"))
            time.sleep(0.5)  # let the stop messages leave before the sockets close
        finally:
            self.io.stop()
            self.metrics.close()

    def _settle(self, groups: list) -> None:
        with self.io.cond:
            self.dispatcher.settle([int(g.column("group_id")[0].as_py()) for g in groups])

    def _checkpoint(self, step: int) -> None:
        t0 = time.perf_counter()
        with self.io.cond:
            data = self.dispatcher.state()
        state = {"step": step, "version": self.version, "dispatcher": data,
                 "stale_dropped": self.stale_dropped, "groups_filtered": self.groups_filtered,
                 "counters": self._counters()}
        self.ranks.send("checkpoint", str(step).encode())
        path = self.save_checkpoint(step, state)
        log.info("checkpoint %s (%.1fs, %d prompts outstanding)", path, time.perf_counter() - t0, len(data["pending"]))

    # Reliability counters continue across a resume (what happened after the checkpoint is
    # discarded with the steps it belonged to).
    _COUNTERS = {"prompts_redispatched": ("dispatcher", "redispatched"), "samples_lost": ("dispatcher", "samples_lost"),
                 "duplicates_dropped": ("io", "duplicates"), "samples_duplicate_dropped": ("io", "duplicate_samples"),
                 "generator_restarts": ("io", "generator_restarts"), "generators_gone": ("io", "generators_gone")}

    def _counters(self) -> dict[str, int]:
        out = {k: int(getattr(getattr(self, owner), attr)) for k, (owner, attr) in self._COUNTERS.items()}
        out["sync_failures"] = self._sync_failures()
        return out

    def _restore_counters(self, counters: dict[str, int]) -> None:
        for key, (owner, attr) in self._COUNTERS.items():
            setattr(getattr(self, owner), attr, int(counters.get(key, 0)))
        self._sync_failures_before = int(counters.get("sync_failures", 0))

    def _sync_failures(self) -> int:
        return self._sync_failures_before + (self.syncer.failures if self.syncer else 0)

    def _next_batch(self) -> list:
        """The oldest ``prompts_per_step`` usable groups: too-stale ones dropped (policy ``drop``)
        and, with DAPO dynamic sampling, groups whose rewards are all equal filtered out while
        their slots are dispatched again until the batch is full."""
        cfg, B, a = self.cfg, self.cfg.learner.prompts_per_step, self.cfg.algorithm
        batch: list = []
        filtered_here = 0
        while len(batch) < B:
            k = B - len(batch)
            groups = self._wait_for(lambda: self.io.buffer.select(k, self.dispatcher.min_inflight_bound()),
                                      cfg.learner.wait_timeout_s, f"{k} scored groups from the reward workers")
            if a.stale_policy == "drop":
                fresh = [g for g in groups
                         if self.version - int(g.column("policy_version")[0].as_py()) <= cfg.learner.max_staleness]
                self.stale_dropped += len(groups) - len(fresh)
                self._settle([g for g in groups if not any(g is f for f in fresh)])
                groups = fresh
            if a.dynamic_sampling and groups:
                rewards = [[float(r or 0.0) for r, b in zip(g.column("reward").to_pylist(),
                                                             g.column("is_baseline").to_pylist()) if not b]
                           for g in groups]
                signal = groups_with_signal(torch.tensor(rewards)).tolist()
                dropped = len(groups) - sum(signal)
                if dropped:
                    self.groups_filtered += dropped
                    filtered_here += dropped
                    if filtered_here > a.dynamic_sampling_max_groups * B:
                        raise RuntimeError(
                            f"dynamic sampling dropped {filtered_here} groups with equal rewards while filling one "
                            f"batch (limit algorithm.dynamic_sampling_max_groups={a.dynamic_sampling_max_groups} x "
                            f"{B}): the reward gives no signal for this policy/data")
                    with self.io.cond:
                        self.dispatcher.discard(dropped)
                self._settle([g for g, keep in zip(groups, signal) if not keep])
                groups = [g for g, keep in zip(groups, signal) if keep]
            batch += groups
        return batch

    def sync_weights(self) -> float:
        """Broadcast the full state to every live generator; return seconds until all serve it."""
        assert self.syncer is not None and self.weights is not None
        return self.syncer.sync(self.weights, self.version)  # K ranks: each attempt sends them "sync"

    def _wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        """``io.wait_for`` that lets a restarted or new generator in while the learner waits: the
        generators get the current weights at once (re-forming the group) instead of at the next
        sync, so a newcomer never idles and a dead member never blocks the next sync."""
        assert self.syncer is not None
        syncer, deadline = self.syncer, time.monotonic() + timeout
        while True:
            got = self.io.wait_for(lambda: _CHANGED if self.io.membership_locked() != syncer.members else predicate(),
                                   max(0.0, deadline - time.monotonic()), what)
            if got is not _CHANGED:
                return got
            log.info("generators changed while waiting for %s: sending weights v%d", what, self.version)
            self.sync_weights()

    def validate(self) -> dict[str, float]:
        """Greedy scores of the test prompts, generated by the generators at their current version."""
        if not self.val_prompts:
            return {}
        gids = self.io.request_validation(self.val_prompts, self.cfg.sampling.max_new_tokens)
        res = self._wait_for(lambda: [self.io.val_results.pop(g) for g in gids]
                               if all(g in self.io.val_results for g in gids) else None,
                               self.cfg.learner.wait_timeout_s, f"{len(gids)} validation results")
        rewards = [float(b.column("reward")[0].as_py() or 0.0) for b in res]
        versions = [int(b.column("policy_version")[0].as_py()) for b in res]
        # accuracy: replies earning the full reward (a correct final answer in the asked format)
        return {"val_reward_mean": sum(rewards) / len(rewards),
                "val_accuracy": sum(r >= 1.0 for r in rewards) / len(rewards),
                "val_policy_version_min": min(versions)}

    def _log_validation(self, step: int, time_s: float) -> None:
        val = self.validate()
        if val:
            self.metrics.log({"step": step, "policy_version": self.version, "time_s": time_s, **val})

    def _record(self, step: int, groups: list, staleness: list[int], stats: dict[str, float],
                sync_s: float, step_s: float, time_s: float) -> dict[str, Any]:
        rewards = [r for g in groups for r, b in zip(g.column("reward").to_pylist(),
                                                      g.column("is_baseline").to_pylist()) if not b]
        samples = len(rewards)
        tokens = sum(sum(g.column("response_token_ids").value_lengths().to_pylist()) for g in groups)
        errors = sum(g.num_rows - g.column("reward_error").null_count for g in groups)
        versions = [int(g.column("policy_version")[0].as_py()) for g in groups]
        return {
            "step": step, "policy_version": self.version,
            "prompt_ids": [int(g.column("prompt_id")[0].as_py()) for g in groups],
            "reward_mean": sum(float(r or 0.0) for r in rewards) / samples,
            "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
            "samples": samples, "tokens": tokens, "samples_per_s": samples / max(step_s, 1e-9),
            "tokens_per_s": tokens / max(step_s, 1e-9), "weight_sync_s": sync_s, "step_s": step_s,
            "sample_version_min": min(versions), "sample_version_max": max(versions),
            "time_s": time_s, "stale_dropped": self.stale_dropped, "groups_filtered": self.groups_filtered, "reward_errors": errors,
            "messages_dropped": self.io.drops.total, "duplicates_dropped": self.io.duplicates,
            "samples_duplicate_dropped": self.io.duplicate_samples,
            "samples_lost": self.dispatcher.samples_lost, "prompts_redispatched": self.dispatcher.redispatched,
            "generator_restarts": self.io.generator_restarts, "generators_gone": self.io.generators_gone,
            "sync_failures": self._sync_failures(),
            "worker_restarts": worker_restarts(self.cfg.run.dir),
            "transport_s_total": self.io.transport_s, "trajectory_mb_total": self.io.bytes_in / 2**20,
            **stats,
        }


def worker_restarts(run_dir: Path) -> int:
    """Restarts `asyncrl up` recorded in ``supervisor.jsonl`` (0 when started by hand)."""
    path = run_dir / "supervisor.jsonl"
    if not path.is_file():
        return 0
    return sum('"restart"' in line for line in path.read_text().splitlines())


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


def main(cfg: RunConfig) -> None:
    """Entry point of ``asyncrl learner CONFIG`` (each rank's, under torchrun)."""
    init_distributed()
    if dist.get_world_size() != cfg.learner.world_size:
        raise RuntimeError(f"learner.world_size={cfg.learner.world_size} but this process group has "
                           f"{dist.get_world_size()} rank(s); start the learner with `asyncrl up` or "
                           f"`torchrun --nproc-per-node {cfg.learner.world_size} -m cli.main learner CONFIG`")
    try:
        if dist.get_rank() == 0:
            Learner(cfg).run()
        else:
            LearnerRank(cfg).follow()
    finally:
        dist.destroy_process_group()
