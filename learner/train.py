"""The learner process: set-up, the training step and checkpoints on every rank.

Rank 0 (:class:`Learner`) drives the loop through the :class:`~learner.orchestrator.orchestrator.Orchestrator`
(dispatch, batches, weight sync, validation, metrics records); ranks 1..K-1
(:class:`LearnerRank`) follow its commands.

    cfg = load_config("configs/tiny_cpu.toml"); Learner(cfg).run()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from asyncrl.config import EnvironmentSection, RunConfig, dump_config
from asyncrl.data.dataset import load_prompts
from asyncrl.metrics import MetricsLogger
from asyncrl.timeline import Timeline
from asyncrl.transport import make_transport
from learner.algo.advantages import needs_values
from learner.algo.distill import load_teacher
from learner.fsdp.checkpoint import Checkpointer, CheckpointError
from learner.fsdp.critic import load_critic
from learner.fsdp.lora import AdapterOff
from learner.fsdp.model import init_distributed, load_policy, save_hf, trainable
from learner.fsdp.ranks import RankChannel, parse_step, step_payload
from learner.fsdp.stream_sync import follow_sync, sync_source
from learner.mfu import StepFlops
from learner.orchestrator.dispatcher import TokenizedPrompt
from learner.orchestrator.orchestrator import Orchestrator
from learner.orchestrator.record import StepTimes, truncate_metrics
from learner.orchestrator.validation import ValSet
from learner.samples import SampleDumps
from learner.step import Trainer

log = logging.getLogger("learner")


def tokenize_prompts(path: Any, tokenizer: Any, max_tokens: int,
                     environment: EnvironmentSection | None = None) -> tuple[list[TokenizedPrompt], int]:
    """Chat-templated prompt token ids; prompts longer than ``max_tokens`` are dropped (counted).

    With an ``[environment]``, its tools are rendered into each prompt the way the model's chat
    template takes them (``tools=``, or the parser's instructions in the system prompt where the
    template ignores them; :func:`envs.render.render_prompt`)."""
    render = _tool_renderer(environment)
    out, dropped = [], 0
    for row in load_prompts(path):
        ids = render(tokenizer, row.messages) if render is not None else tokenizer.apply_chat_template(
            row.messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers may return a BatchEncoding
            ids = ids["input_ids"]
        if len(ids) > max_tokens:
            dropped += 1
            continue
        out.append(TokenizedPrompt(row.prompt_id, [int(i) for i in ids], row.data_source, row.ground_truth))
    return out, dropped


def _tool_renderer(environment: EnvironmentSection | None) -> Callable[[Any, list], list[int]] | None:
    """``(tokenizer, messages) -> prompt ids`` with the environment's tools; None without one."""
    if environment is None or environment.name is None:
        return None
    from asyncrl.data.format import DataError
    from envs.registry import load_environment
    from envs.render import render_prompt

    try:
        tools, parser = list(load_environment(environment.name).tools), environment.tool_parser
    except ValueError as e:  # EnvironmentLoadError: bad input, exit 2 (asyncrl up checks it before starting)
        raise DataError(f"environment.name: {e}") from None
    return lambda tokenizer, messages: render_prompt(tokenizer, messages, tools, parser)


class LearnerRank:
    """What every learner rank holds: its shards of the policy (and reference/critic), the
    trainer, and the channel on which rank 0 leads. Ranks 1..K-1 run :meth:`follow`."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.run.seed)
        self.model, self.tokenizer = load_policy(cfg.model.path, cfg.model.learner_dtype, cfg.learner,
                                                 lora=cfg.learner.lora)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.trainer = self._build_trainer()
        self.ranks = RankChannel(timeout_s=cfg.learner.wait_timeout_s + cfg.weight_sync.timeout_s)
        self.checkpointer = Checkpointer(cfg.run.dir / "checkpoints", cfg.learner.keep_checkpoints)
        self.resumed: dict[str, Any] | None = self._resume() if cfg.run.resume else None

    def modules(self) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
        t = self.trainer
        out: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {"policy": (t.policy, t.optimizer)}
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
        opt = torch.optim.AdamW(trainable(self.model), lr=lr.lr, betas=lr.betas, weight_decay=lr.weight_decay)
        reference: Any = None
        critic = critic_opt = None
        if a.uses_reference and lr.lora.enabled:  # the same base with the adapters off: no second copy
            reference = AdapterOff(self.model)
        elif a.uses_reference:  # a frozen copy of the initial policy
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
    """Rank 0: drives the loop through the :class:`Orchestrator`, trains, checkpoints, logs."""

    def __init__(self, cfg: RunConfig) -> None:
        cfg.run.dir.mkdir(parents=True, exist_ok=True)
        super().__init__(cfg)
        train, dropped = tokenize_prompts(cfg.data.train, self.tokenizer, cfg.data.max_prompt_tokens, cfg.environment)
        log.info("%d training prompts (%d dropped as longer than %d tokens)", len(train), dropped,
                 cfg.data.max_prompt_tokens)
        val: list[TokenizedPrompt] = []
        if cfg.data.test is not None:
            val, _ = tokenize_prompts(cfg.data.test, self.tokenizer, cfg.data.max_prompt_tokens, cfg.environment)
            val = val[:cfg.learner.val_prompts]
        self.orchestrator = Orchestrator(cfg, train, val, make_transport(cfg.transport),
                                         sync_source(self.model, self.ranks), val_sets=self._val_sets())
        self.start_step = 0
        if self.resumed is not None:
            self.start_step = int(self.resumed["step"])
            self.orchestrator.restore(self.resumed)
            truncate_metrics(cfg.run.dir / "metrics.jsonl", self.start_step)
        self.timeline = Timeline(cfg.run.dir, "learner")  # wait/train/sync/validate spans (asyncrl report)
        self.dumps = SampleDumps(cfg.run.dir, cfg.logging.samples_every, self.tokenizer)  # asyncrl samples
        self.flops = StepFlops(cfg, self.trainer.device.type)  # MFU, pipeline efficiency
        self.flops.peaks  # noqa: B018 (measured now, before training, when not cached: asyncrl/peak.py)
        self.metrics = MetricsLogger.from_config(cfg.logging, cfg.run.dir, cfg.run.max_steps, dump_config(cfg),
                                                 resume_step=None if self.resumed is None else self.start_step)

    def _val_sets(self) -> list[ValSet]:
        """The ``[[data.val]]`` sets, tokenised like the training prompts (each its first ``max_prompts``)."""
        cfg, out = self.cfg, []
        for v in cfg.data.val:
            prompts, dropped = tokenize_prompts(v.path, self.tokenizer, cfg.data.max_prompt_tokens, cfg.environment)
            prompts = prompts[:v.max_prompts] if v.max_prompts else prompts
            log.info("validation set %s: %d prompts x %d replies at temperature %g (%d dropped as too long)", v.name,
                     len(prompts), v.n, v.temperature, dropped)
            out.append(ValSet(v.name, prompts, v.n, v.temperature, v.max_new_tokens))
        return out

    def run(self) -> None:
        cfg, orch = self.cfg, self.orchestrator
        try:
            orch.connect()
            self.metrics.log(self.flops.record())  # the peaks learner_mfu / pipeline_efficiency divide by
            start = last = time.perf_counter()
            if self.resumed is None:
                self._log_validation()
            else:  # connect sent them the resumed policy before any prompt
                log.info("generators serve the resumed weights v%d; continuing at step %d", orch.version,
                         self.start_step + 1)
            for step in range(self.start_step + 1, cfg.run.max_steps + 1):
                rec, last = self._step(step, start, last)
                if step == cfg.run.max_steps or (cfg.learner.val_every and step % cfg.learner.val_every == 0):
                    rec.update(self._validate(step))
                self.metrics.log(rec)
                if self._checkpoint_due(step):
                    self._checkpoint(step)
            if cfg.learner.save_final:
                out = cfg.run.dir / "checkpoints" / "final"
                self.ranks.send("save", str(out).encode())
                save_hf(self.model, self.tokenizer, out)
                log.info("saved final checkpoint to %s", out)
            self.ranks.send("stop")
            orch.stop()
        finally:
            orch.close()
            self.metrics.close()
            self.timeline.close()

    def _step(self, step: int, start: float, last: float) -> tuple[dict[str, Any], float]:
        """Wait for a batch, train on it (every rank), publish the weights when due: the step's
        record and when it ended."""
        orch, tl = self.orchestrator, self.timeline
        t_wait = time.perf_counter()
        with tl.span("wait"):
            groups = orch.next_batch()
        t_train = time.perf_counter()
        version, batches = orch.version, [g.batch for g in groups]
        with tl.span("train"):
            self.ranks.send("step", step_payload(batches, version))
            stats = self.trainer.step(batches, version)
        stats["wait_s"], stats["train_s"] = t_train - t_wait, time.perf_counter() - t_train
        stats.update(self.flops.step(groups, stats["train_s"]))
        peak_s_per_sample = stats.pop("_peak_s_per_sample")
        if self.dumps.due(step):  # what the model wrote, with what the learner made of it
            self.dumps.train(step, groups, version, self.trainer.last_logprob_gap)
        orch.trained(groups)
        sync_s = 0.0
        if orch.version % self.cfg.learner.sync_every == 0:
            with tl.span("sync"):
                sync_s = orch.publish_weights()
        stats["weight_sync_mb"] = orch.syncer.last_mb if sync_s else 0.0
        now = time.perf_counter()
        times = StepTimes(trained_at=version, sync_s=sync_s, step_s=now - last, time_s=now - start)
        rec = orch.record(step, groups, stats, times)
        rec["pipeline_efficiency"] = StepFlops.efficiency(rec, peak_s_per_sample)
        return rec, now

    def _validate(self, step: int) -> dict[str, float]:
        """Every validation set's metrics; their samples go to the step's validation dump."""
        version = self.orchestrator.version
        with self.timeline.span("validate"):
            return self.orchestrator.validate(lambda results: self.dumps.validation(
                step, {r.set.name or "test": r.groups for r in results}, version))  # data.test: "test"

    def _log_validation(self) -> None:
        val = self._validate(0)
        if val:
            self.metrics.log({"step": 0, "policy_version": self.orchestrator.version, "time_s": 0.0, **val})

    def _checkpoint_due(self, step: int) -> bool:
        """Every ``checkpoint_every`` steps, and at the last step unless ``checkpoint_final`` is off:
        a finished run continues with ``asyncrl up CONFIG --resume --max-steps M``."""
        lr, last = self.cfg.learner, step == self.cfg.run.max_steps
        return (last and (lr.checkpoint_final or lr.checkpoint_every > 0)) or bool(
            lr.checkpoint_every and step % lr.checkpoint_every == 0)

    def _checkpoint(self, step: int) -> None:
        t0 = time.perf_counter()
        state = {"step": step, **self.orchestrator.state()}
        self.ranks.send("checkpoint", str(step).encode())
        path = self.save_checkpoint(step, state)
        log.info("checkpoint %s (%.1fs, %d prompts outstanding)", path, time.perf_counter() - t0,
                 len(state["dispatcher"]["pending"]))


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
