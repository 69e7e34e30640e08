"""The multi-turn episode loop (rollout/episode.py) on a real vLLM engine with the tiny model:
token in / token out, gapped loss masks, per-token versions, limits, seeds, rewards; and the
trajectory rows it makes."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from asyncrl.config import validate_config
from asyncrl.transport.items import PromptItem, ScoredGroup
from envs.base import StepResult, ToolCall
from rollout.episode import Episode, EpisodeLimits, EpisodeRunner, render_after_turn, turn_seed
from tests.envs_for_tests import Broken, EagerArithTools, SlowTool

GO_ON = [{"role": "user", "content": "go on"}]


class Versioned(SlowTool):
    """Each step moves the generator's weights version on by one (a sync between turns)."""

    clock: ClassVar[dict[str, int]] = {"v": 0}

    def step(self, reply: str, calls: list[ToolCall], parse_errors: list[str]) -> StepResult:
        self.clock["v"] += 1
        return super().step(reply, calls, parse_errors)


class Sleepy(SlowTool):
    delay_s = 0.4


def _item(ids: list[int], n: int, seed: int | None = 123) -> PromptItem:
    return PromptItem(prompt_id=1, group_id=1, split="train", data_source="arith_tools", ground_truth="56088",
                      prompt_token_ids=ids, n=n, temperature=1.0, max_tokens=8, seed=seed)


def _runner(engine: Any, tokenizer: Any, env_cls: type, pool: ThreadPoolExecutor, *, turns: int = 3,
            total: int = 400, per_turn: int = 8, tool_s: float = 30.0,
            version: Callable[[], int] = lambda: Versioned.clock["v"]) -> EpisodeRunner:
    from envs.parsers import get_parser

    limits = EpisodeLimits(turns, total, per_turn, tool_s)
    return EpisodeRunner(engine, env_cls, get_parser("hermes"), tokenizer, limits, top_p=1.0, version=version,
                         executor=pool)


def _check_gaps(ep: Episode, tokenizer: Any, messages: list[dict[str, str]] | None) -> None:
    """Every token between two model turns is what envs.render says follows the first; those have
    mask 0, log-prob 0 and version -1; model tokens have mask 1 and a real version."""
    n = len(ep.token_ids)
    assert len(ep.logprobs) == len(ep.loss_mask) == len(ep.versions) == n
    ends = ep.turn_starts[1:]
    for k, start in enumerate(ep.turn_starts):
        model_end = start + ep.loss_mask[start:].index(0) if 0 in ep.loss_mask[start:] else n
        assert all(m == 1 for m in ep.loss_mask[start:model_end]) and all(v >= 0 for v in ep.versions[start:model_end])
        if k < len(ends):
            gap = ep.token_ids[model_end:ends[k]]
            if messages is not None:
                assert gap == render_after_turn(tokenizer, ep.token_ids[start:model_end], messages)
            assert ep.loss_mask[model_end:ends[k]] == [0] * len(gap)
            assert ep.logprobs[model_end:ends[k]] == [0.0] * len(gap)
            assert ep.versions[model_end:ends[k]] == [-1] * len(gap)


def _learner_logprobs(model: Any, prompt: list[int], ep: Episode) -> torch.Tensor:
    """The HF model's log-prob of each response token given everything before it."""
    ids = torch.tensor([prompt + ep.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ep.token_ids)[:, None])[:, 0]


@pytest.mark.slow
def test_episodes_on_vllm(tiny_model_dir: Path) -> None:
    """One engine, several scenarios: concurrent 3-turn episodes whose behaviour log-probs equal the
    learner's recomputation over the gapped sequence; per-token versions across a sync between turns;
    reproducible per-(sample, turn) seeds; the token, tool-time and error limits."""
    from transformers import AutoTokenizer

    from rollout.worker import build_engine

    cfg = validate_config({"model": {"path": str(tiny_model_dir)}, "data": {"train": "unused.parquet"},
                           "rollout": {"dtype": "float32", "kv_cache_gb": 0.125},
                           "environment": {"name": "arith_tools"}})
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = [int(i) for i in tok.apply_chat_template([{"role": "user", "content": "What is 123 * 456?"}],
                                                      add_generation_prompt=True, tokenize=True, return_dict=False)]
    pool = ThreadPoolExecutor(8)

    async def scenario() -> dict[str, Any]:
        engine = build_engine(cfg, seed=0)
        out: dict[str, Any] = {}
        try:
            run = _runner(engine, tok, Versioned, pool)
            item = _item(prompt, 3)
            out["group"] = await asyncio.gather(*(run.run(item, i, 1.0, f"a-s{i}") for i in range(3)))
            out["again"] = await run.run(item, 0, 1.0, "b-s0")
            out["eager"] = await _runner(engine, tok, EagerArithTools, pool).run(item, 0, 1.0, "c-s0")
            short = _runner(engine, tok, SlowTool, pool, turns=10, total=len(prompt) + 20)
            out["short"] = await short.run(item, 0, 1.0, "d-s0")
            out["slow"] = await _runner(engine, tok, Sleepy, pool, tool_s=0.6).run(item, 0, 1.0, "e-s0")
            out["broken"] = await _runner(engine, tok, Broken, pool).run(item, 0, 1.0, "f-s0")
            ticks = itertools.count()  # a version that moves on at every read: a sync landing mid-turn
            out["ticking"] = await _runner(engine, tok, SlowTool, pool, turns=1, per_turn=12,
                                           version=lambda: next(ticks)).run(item, 0, 1.0, "g-s0")
        finally:
            engine.shutdown()
        return out

    out = asyncio.run(scenario())
    pool.shutdown()
    group: list[Episode] = out["group"]
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for ep in group:
        assert ep.num_turns == 3 and 0 in ep.loss_mask
        _check_gaps(ep, tok, GO_ON)
        assert ep.env_reward == pytest.approx(3 * 0.5 + 1.0)
        mine = torch.tensor(ep.logprobs)
        theirs = _learner_logprobs(hf, prompt, ep)
        trained = torch.tensor(ep.loss_mask, dtype=torch.bool)
        assert (mine[trained] - theirs[trained]).abs().max() < 2e-3  # token in / token out: same tokens, same log-probs
    # the version moved on at every step (3 concurrent episodes x 3 steps, one shared clock): each token
    # carries the version it was made under, so within a turn they never go back (another episode's
    # step may land mid-turn, like a sync), and this episode's own step puts its next turn past them
    first = group[0]
    turn_versions = [[v for v in first.versions[s:e] if v >= 0]
                     for s, e in zip(first.turn_starts, first.turn_starts[1:] + [len(first.versions)])]
    assert all(v == sorted(v) and v for v in turn_versions)
    assert all(min(b) > max(a) for a, b in zip(turn_versions, turn_versions[1:]))
    row = first.row(_item(prompt, 3), 0, 0, 9)
    assert row["policy_version"] == min(turn_versions[0]) and row["policy_version_end"] == max(turn_versions[2])
    # per-(sample, turn) seeds: samples differ, the same sample repeats exactly
    assert len({tuple(ep.token_ids[:first.turn_starts[1]]) for ep in group}) > 1
    again: Episode = out["again"]
    assert again.token_ids[:again.turn_starts[1]] == first.token_ids[:first.turn_starts[1]]
    # arith_tools with every reply taken as a calculator call: the calculator ran, errors were observations
    eager: Episode = out["eager"]
    assert eager.num_turns == 3 and eager.num_tool_calls == 3 and eager.tool_errors >= 1
    calls = eager.tool_calls
    assert [c["turn"] for c in calls] == [0, 1, 2] and all(c["name"] == "calculator" for c in calls)
    assert "error" in "".join(eager.text)  # the calculator's error message is in the transcript
    # the token budget: turns cut to fit, then the episode ends
    short: Episode = out["short"]
    assert len(prompt) + len(short.token_ids) <= len(prompt) + 20 and short.finish_reason == "length"
    # the tool-time budget: the step that overran ends the episode and counts as an error
    slow: Episode = out["slow"]
    assert slow.num_turns == 2 and slow.finish_reason == "tool_time" and slow.tool_errors == 1
    ticking: Episode = out["ticking"]  # every streamed delta is stamped when it arrives
    assert len(set(ticking.versions)) > 1 and ticking.versions == sorted(ticking.versions)
    broken: Episode = out["broken"]
    assert broken.num_turns == 1 and broken.finish_reason == "env_error" and "broken environment" in \
        broken.tool_calls[-1]["error"]


def test_turn_seeds_are_distinct_and_stable() -> None:
    seeds = {turn_seed(7, s, t) for s in range(8) for t in range(8)}
    assert len(seeds) == 64 and turn_seed(7, 3, 2) == turn_seed(7, 3, 2) and turn_seed(None, 0, 0) is None
    assert all(0 <= s < 2**31 for s in seeds if s is not None)


def test_episode_row_is_a_valid_gapped_trajectory() -> None:
    ep = Episode()
    ep.begin_turn()
    ep.add_model_tokens([5, 6], [-0.5, -0.25], version=3)
    ep.text.append("ab")
    ep.add_observation([7, 8, 9], "obs")
    ep.begin_turn()
    ep.add_model_tokens([10], [-1.0], version=4)
    ep.text.append("c")
    ep.turn_rewards, ep.final_reward, ep.num_tool_calls = [0.5], 1.0, 1
    ep.tool_calls = [{"turn": 0, "name": "calculator", "arguments": {"expression": "1+1"}, "ok": True,
                      "seconds": 0.01, "error": None}]
    row = ep.row(_item([1, 2], 1), 0, 0, 9)
    base = {"prompt_id": 1, "group_id": 1, "split": "train", "data_source": "arith_tools", "ground_truth": "3",
            "prompt_token_ids": [1, 2], "generator_index": 0, "gen_start_time": 1.0, "gen_end_time": 2.0}
    g = ScoredGroup.from_wire(ScoredGroup.from_rows([{**base, **row}]).to_wire())
    b = g.batch
    assert b.column("loss_mask").to_pylist() == [[1, 1, 0, 0, 0, 1]]
    assert b.column("token_versions").to_pylist() == [[3, 3, -1, -1, -1, 4]]
    assert b.column("turn_starts").to_pylist() == [[0, 5]] and b.column("response_text")[0].as_py() == "abobsc"
    assert g.policy_version == 3 and b.column("policy_version_end")[0].as_py() == 4
    assert g.env_rewards.tolist() == [1.5] and g.trained_tokens == 3
    assert json.loads(b.column("tool_calls")[0].as_py())[0]["name"] == "calculator"
    stats = g.episode_stats()
    assert stats["num_turns"].tolist() == [2] and stats["num_tool_calls"].tolist() == [1]


@pytest.mark.parametrize(("spec", "says"), [("no_such_env", "no_such_env"),
                                           ("tests/envs_for_tests.py:Missing", "Missing")])
def test_up_refuses_a_bad_environment_with_exit_2(tiny_model_dir: Path, tmp_path: Path, spec: str, says: str) -> None:
    """Pre-flight loads the environment class before any process starts."""
    import subprocess
    import sys

    from cli.data.arith_tools import write_arith_tools
    from tests.e2e import REPO

    write_arith_tools(tmp_path / "data", n_train=8, n_test=2, seed=0)
    sets = [f"model.path={tiny_model_dir}", f"data.train={tmp_path / 'data/train.parquet'}",
            f"data.test={tmp_path / 'data/test.parquet'}", f"environment.name={spec}"]
    argv = [sys.executable, "-m", "cli.main", "up", str(REPO / "configs/tiny_cpu_tools.toml"), "--dry-run",
            "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "environment.name" in res.stderr and says in res.stderr


def test_learner_renders_the_environment_tools_into_prompts(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from asyncrl.config import EnvironmentSection
    from asyncrl.data.format import DataError
    from cli.data.arith_tools import write_arith_tools
    from learner.train import tokenize_prompts

    write_arith_tools(tmp_path, n_train=4, n_test=1, seed=0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain, _ = tokenize_prompts(tmp_path / "train.parquet", tok, 4096)
    tools, _ = tokenize_prompts(tmp_path / "train.parquet", tok, 4096, EnvironmentSection(name="arith_tools"))
    text = tok.decode(tools[0].token_ids)
    assert '"name": "calculator"' in text and "<tool_call>" in text  # the template ignores tools=: system prompt
    assert "<tool_call>" not in tok.decode(plain[0].token_ids) and len(tools[0].token_ids) > len(plain[0].token_ids)
    assert text.endswith("<|im_start|>assistant\n")
    with pytest.raises(DataError, match="environment.name"):
        tokenize_prompts(tmp_path / "train.parquet", tok, 4096, EnvironmentSection(name="nope"))
