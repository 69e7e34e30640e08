"""The multi-turn episode loop: token in, token out, one environment object per sample.

A sample of a group is an episode: the prompt's tokens go to vLLM, the model's turn streams back
(``RequestOutputKind.DELTA``), the environment reads the turn's text (tool calls parsed by the
configured parser) in a worker thread, and its observation is rendered to tokens that follow the
model's turn (:func:`envs.render.render_observation`). The next turn's request is the prompt plus
every token so far, as token ids: earlier turns are never re-tokenised, so the log-probs the
learner recomputes are those of the exact tokens the model sampled.

Per response token the episode records: ``loss_mask`` 1 on the model's tokens and 0 on
observations; ``behaviour_logprobs`` of the model's tokens (0.0 on observations); ``token_versions``,
the generator's weights version when the token arrived (-1 on observations), so a weight sync that
lands mid-episode or mid-turn (the engine pauses with requests kept) is visible per token.

Limits per episode: ``max_turns`` model turns; ``max_total_tokens`` for prompt + response (each
turn's ``max_tokens`` is cut to what is left, an observation that does not fit ends the episode);
``max_tool_time_s`` in the environment (a step that overruns ends the episode and counts as a
tool error; its thread cannot be killed and finishes in the background, so tools that may hang
belong in :mod:`sandbox` with their own timeout).

The environment's :class:`EpisodeStart` has the row's prompt id, data source and ground truth;
its ``messages`` are empty (a prompt item carries token ids only), so an environment that needs the
question must take it from the ground truth or its own data.

Seeds: a train item's ``seed`` (the dispatcher's, reproducible across resumes) becomes one seed
per (sample, turn) by :func:`turn_seed`, so every request differs and a re-run repeats them.

    runner = EpisodeRunner(engine, env_cls, parser, tokenizer, limits, top_p=1.0, version=lambda: 3,
                           executor=ThreadPoolExecutor(4))
    episode = await runner.run(item, sample_index=0, temperature=1.0, request_id="g0-7-s0")
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from asyncrl.config import RunConfig
from asyncrl.transport.items import PromptItem
from envs.base import Environment, EpisodeStart, StepResult, ToolCall

log = logging.getLogger("rollout")

# (tokenizer, the model's last turn's tokens, observation messages) -> the tokens that follow that turn
RenderObservation = Callable[[Any, list[int], list[dict[str, Any]]], list[int]]


def render_after_turn(tokenizer: Any, turn_ids: list[int], messages: list[dict[str, Any]]) -> list[int]:
    """What follows a model turn: the template's end of that turn (what the model did not emit
    itself), the observation messages and the next generation prompt (:mod:`envs.render`)."""
    from envs.render import render_observation, turn_close

    return turn_close(tokenizer, turn_ids) + render_observation(tokenizer, messages)


class Parser(Protocol):
    def parse(self, text: str) -> tuple[list[ToolCall], list[str]]: ...


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int
    max_total_tokens: int
    max_tokens_per_turn: int
    max_tool_time_s: float

    @classmethod
    def from_config(cls, cfg: RunConfig) -> EpisodeLimits:
        env = cfg.environment
        return cls(env.max_turns, cfg.sequence_tokens, cfg.turn_tokens, env.max_tool_time_s)


def load_environment_class(spec: str) -> type[Environment]:
    """The environment class ``environment.name`` names (registry name, module:Class or
    path/to/file.py:Class); a bad spec is bad input (DataError, exit 2) naming the key."""
    from asyncrl.data.format import DataError
    from envs.registry import load_environment

    try:
        return load_environment(spec)
    except ValueError as e:  # EnvironmentLoadError: unknown name, import error, not an Environment
        raise DataError(f"environment.name: {e}") from None


def turn_seed(seed: int | None, sample_index: int, turn: int) -> int | None:
    """A distinct, reproducible 31-bit seed per (dispatch seed, sample, turn); None stays None."""
    if seed is None:
        return None
    return random.Random(f"{seed}/{sample_index}/{turn}").getrandbits(31)


@dataclass
class Episode:
    """One sample's response region: model turns and observations, token by token."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    turn_starts: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    num_tool_calls: int = 0
    tool_errors: int = 0
    tool_time_s: float = 0.0
    turn_rewards: list[float] = field(default_factory=list)
    final_reward: float | None = None

    @property
    def num_turns(self) -> int:
        return len(self.turn_starts)

    def begin_turn(self) -> None:
        self.turn_starts.append(len(self.token_ids))

    def add_model_tokens(self, ids: list[int], logprobs: list[float], version: int) -> None:
        self.token_ids += ids
        self.logprobs += logprobs
        self.loss_mask += [1] * len(ids)
        self.versions += [version] * len(ids)

    def add_observation(self, ids: list[int], text: str) -> None:
        self.token_ids += ids
        self.logprobs += [0.0] * len(ids)
        self.loss_mask += [0] * len(ids)
        self.versions += [-1] * len(ids)
        self.text.append(text)

    @property
    def env_reward(self) -> float | None:
        """Sum of the turn rewards and the final reward; None when the environment gave neither."""
        if not self.turn_rewards and self.final_reward is None:
            return None
        return float(sum(self.turn_rewards) + (self.final_reward or 0.0))

    def row(self, item: PromptItem, sample_index: int, start_version: int, end_version: int) -> dict[str, Any]:
        """The episode's columns of a trajectory row (asyncrl/schema.py); ``*_version`` when no
        model token was produced."""
        model = [v for v in self.versions if v >= 0]
        return {
            "sample_index": sample_index, "response_token_ids": self.token_ids,
            "behaviour_logprobs": self.logprobs, "loss_mask": self.loss_mask, "token_versions": self.versions,
            "turn_starts": self.turn_starts or [0], "response_text": "".join(self.text),
            "finish_reason": self.finish_reason,
            "policy_version": min(model, default=start_version), "policy_version_end": max(model, default=end_version),
            "env_reward": self.env_reward, "num_turns": self.num_turns, "num_tool_calls": self.num_tool_calls,
            "tool_errors": self.tool_errors, "tool_time_s": self.tool_time_s,
            "tool_calls": json.dumps(self.tool_calls, default=str),
        }


class EpisodeRunner:
    """Runs episodes on one vLLM ``AsyncLLM``; any number concurrently (continuous batching)."""

    def __init__(self, engine: Any, env_cls: type[Environment], parser: Parser, tokenizer: Any,
                 limits: EpisodeLimits, *, top_p: float, version: Callable[[], int], executor: Executor,
                 render_observation: RenderObservation | None = None) -> None:
        self.engine, self.env_cls, self.parser, self.tokenizer = engine, env_cls, parser, tokenizer
        self.limits, self.top_p, self.version, self.executor = limits, top_p, version, executor
        self.render_observation = render_observation or render_after_turn

    async def run(self, item: PromptItem, sample_index: int, temperature: float, request_id: str) -> Episode:
        """One episode from ``item``'s prompt; every limit is enforced here."""
        lim, ep = self.limits, Episode()
        env = self.env_cls()
        start = EpisodeStart(item.prompt_id, item.data_source, item.ground_truth)
        await self._call(ep, env.reset, start)
        if ep.tool_errors:  # reset failed or overran: no episode to play (an empty, untrained response)
            return ep
        while True:
            room = lim.max_total_tokens - len(item.prompt_token_ids) - len(ep.token_ids)
            if room <= 0:
                ep.finish_reason = "length"
                break
            reply = await self._turn(ep, item, sample_index, temperature, min(lim.max_tokens_per_turn, room),
                                     f"{request_id}-t{ep.num_turns}")
            result = await self._step(ep, env, reply)
            if result is None or result.done or not result.messages or ep.num_turns >= lim.max_turns:
                break
            obs = self.render_observation(self.tokenizer, ep.token_ids[ep.turn_starts[-1]:], result.messages)
            if len(item.prompt_token_ids) + len(ep.token_ids) + len(obs) >= lim.max_total_tokens:
                ep.finish_reason = "length"  # no room for the observation and another turn
                break
            ep.add_observation(obs, self.tokenizer.decode(obs, skip_special_tokens=False))
        if self._tool_time_left(ep) > 0:
            ep.final_reward = await self._call(ep, env.final_reward)
        return ep

    async def _turn(self, ep: Episode, item: PromptItem, sample_index: int, temperature: float, max_tokens: int,
                    request_id: str) -> str:
        """Stream one model turn into ``ep`` (each delta stamped with the version at arrival); its text."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(n=1, temperature=temperature, top_p=self.top_p, max_tokens=max_tokens, logprobs=0,
                                output_kind=RequestOutputKind.DELTA,
                                seed=turn_seed(item.seed, sample_index, ep.num_turns))
        ep.begin_turn()
        texts: list[str] = []
        prompt = {"prompt_token_ids": item.prompt_token_ids + ep.token_ids}
        async for out in self.engine.generate(prompt, params, request_id=request_id):
            c = out.outputs[0]
            ids = list(c.token_ids)
            if ids:
                lps = [float(c.logprobs[i][tok].logprob) for i, tok in enumerate(ids)]
                ep.add_model_tokens(ids, lps, self.version())
            texts.append(c.text)
            if out.finished:
                ep.finish_reason = str(c.finish_reason)
        reply = "".join(texts)
        ep.text.append(reply)
        return reply

    async def _step(self, ep: Episode, env: Environment, reply: str) -> StepResult | None:
        """The environment's answer to ``reply`` (None: the tool time ran out; the episode ends)."""
        calls, errors = self.parser.parse(reply)
        turn = ep.num_turns - 1
        if self._tool_time_left(ep) <= 0:
            ep.finish_reason = "tool_time"
            return None
        result = await self._call(ep, env.step, reply, calls, errors)
        if result is None:
            return None
        ep.tool_errors += result.tool_errors
        if result.reward is not None:
            ep.turn_rewards.append(float(result.reward))
        records = result.info.get("calls")
        if records is None:  # an environment that does not report its calls: what the parser found
            records = [{"name": c.name, "arguments": c.arguments, "ok": None, "seconds": None, "error": None}
                       for c in calls] + [{"name": None, "arguments": None, "ok": False, "seconds": 0.0, "error": e}
                                          for e in errors]
        ep.tool_calls += [{"turn": turn, **r} for r in records]
        ep.num_tool_calls += len(records)
        return result

    def _tool_time_left(self, ep: Episode) -> float:
        return self.limits.max_tool_time_s - ep.tool_time_s

    async def _call(self, ep: Episode, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the executor within the episode's remaining tool time. None, one tool
        error and the episode's end when it runs out or the environment raises (a bug in an
        environment costs its episode, not the generator; the error is in ``tool_calls``)."""
        t0 = time.perf_counter()
        fut = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        try:
            return await asyncio.wait_for(fut, timeout=self._tool_time_left(ep))
        except TimeoutError:
            why, ep.finish_reason = f"environment.max_tool_time_s={self.limits.max_tool_time_s} spent", "tool_time"
        except Exception as e:  # the environment's own code failed
            why, ep.finish_reason = f"{type(e).__name__} in {self.env_cls.__name__}.{fn.__name__}: {e}", "env_error"
            log.warning("episode ended: %s", why)
        finally:
            ep.tool_time_s += time.perf_counter() - t0
        ep.tool_errors += 1
        ep.tool_calls.append({"turn": ep.num_turns - 1, "name": None, "arguments": None, "ok": False,
                              "seconds": 0.0, "error": why})
        return None
