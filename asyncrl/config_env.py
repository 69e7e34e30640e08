"""The ``[environment]`` section: multi-turn, tool-using episodes (issue 15).

Without ``name`` a run is single-turn, exactly as before. With it, every generator drives one
environment object per sample through the episode loop (rollout/episode.py), the learner renders
the environment's tools into each prompt (envs.render), and the reward worker passes the
environment's reward through where it gives one.

The names follow the systems users come from: ``max_turns`` is prime-rl's (veRL calls it
``multi_turn.max_assistant_turns``), ``tool_parser`` is veRL's ``multi_turn.format``,
``max_total_tokens`` bounds the whole sequence like vLLM's ``max_model_len`` (veRL bounds the
response region with ``response_length``: here that is ``max_total_tokens`` minus the prompt)::

    [environment]
    name = "arith_tools"        # or "module:Class" / "path/to/file.py:Class"
    max_turns = 4
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from asyncrl.config_base import _Section


class EnvironmentSection(_Section):
    """Multi-turn episodes with tools; read by the generators (the loop), the learner (tools in the
    prompt) and the reward workers (the environment's reward passes through)."""

    name: str | None = Field(None, description="Environment: registry name (arith_tools, code), module:Class or "
                             "path/to/file.py:Class. None: single-turn generation (no environment).")
    tool_parser: Literal["hermes", "llama3"] = Field(
        "hermes", description="How tool calls are read from the model's turn (and written into the system prompt "
        "when the chat template ignores tools=): hermes/Qwen <tool_call>{json}</tool_call>, or Llama-3 JSON.")
    max_turns: int = Field(4, ge=1, description="Model turns per episode; the episode ends after this many "
                           "(veRL: multi_turn.max_assistant_turns).")
    max_total_tokens: int | None = Field(
        None, ge=2, description="Prompt + every turn + every observation, per episode: the last turn's max_tokens "
        "is cut to fit and the episode ends when it is spent. None: data.max_prompt_tokens + "
        "sampling.max_new_tokens (the single-turn budget). Also the generators' max_model_len unless "
        "rollout.max_model_len is set.")
    max_new_tokens_per_turn: int | None = Field(
        None, ge=1, description="max_tokens of each model turn. None: sampling.max_new_tokens.")
    max_tool_time_s: float = Field(60.0, gt=0, description="Wall seconds an episode may spend in the "
                                   "environment (reset, steps with their tool calls, final reward; waiting for a "
                                   "free tool thread included); when spent the episode ends and the call that "
                                   "overran counts as a tool error.")
    tool_threads: int = Field(16, ge=1, description="Threads per generator running environment steps, so tools "
                              "never block generation; more concurrent steps wait for a free thread.")

    @property
    def enabled(self) -> bool:
        return self.name is not None
