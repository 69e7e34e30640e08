"""Multi-turn trajectories on the wire and in the learner: the episode columns, batches from older
senders, the reward worker's env-reward pass-through, gapped masks in Rollouts and the step metrics."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from asyncrl import schema
from asyncrl.transport.items import ScoredGroup, token_grid
from learner.rollouts import Rollouts, outcome_token_rewards
from tests.test_wire import _row

# one episode: model turn (2 tokens, v3), observation (3 tokens), model turn (1 token, v4)
EPISODE = {"response_token_ids": [4, 5, 6, 7, 8, 9], "behaviour_logprobs": [-0.5, -1.0, 0.0, 0.0, 0.0, -2.0],
           "loss_mask": [1, 1, 0, 0, 0, 1], "token_versions": [3, 3, -1, -1, -1, 4], "turn_starts": [0, 5],
           "policy_version": 3, "policy_version_end": 4, "env_reward": 1.5, "num_turns": 2, "num_tool_calls": 1,
           "tool_errors": 1, "tool_time_s": 0.25, "tool_calls": "[]"}


def test_batches_from_senders_before_episodes_decode_with_per_row_defaults() -> None:
    rows = [_row(reward=1.0, policy_version=2), _row(sample_index=1, response_token_ids=[6, 7, 8],
                                                     behaviour_logprobs=[-1.0] * 3, policy_version=5)]
    full = schema.make_batch(rows)
    new = [f.name for f in schema.TRAJECTORY_SCHEMA][-9:]
    assert new[0] == "loss_mask" and new[-1] == "tool_calls"
    old = full.select([n for n in full.schema.names if n not in new + ["is_baseline", "attempt"]])
    g = ScoredGroup.from_wire(schema.encode_batch(old))
    assert g.batch.equals(full)
    b = g.batch
    assert b.column("loss_mask").to_pylist() == [[1, 1], [1, 1, 1]]
    assert b.column("token_versions").to_pylist() == [[2, 2], [5, 5, 5]]
    assert b.column("turn_starts").to_pylist() == [[0], [0]] and b.column("env_reward").to_pylist() == [None] * 2
    assert b.column("num_turns").to_pylist() == [1, 1] and b.column("tool_calls").to_pylist() == ["[]"] * 2
    assert g.policy_version == 2  # the oldest row


def test_episode_columns_are_validated() -> None:
    g = ScoredGroup.from_rows([_row(**EPISODE)])
    assert g.trained_tokens == 3 and g.env_rewards.tolist() == [1.5] and g.policy_version == 3
    assert token_grid([g], "loss_mask", 7).tolist() == [[1, 1, 0, 0, 0, 1, 0]]
    for col, bad in (("loss_mask", [1, 0]), ("token_versions", [3]), ("turn_starts", [])):
        with pytest.raises(schema.SchemaError, match=col if col != "turn_starts" else "at least one turn"):
            schema.make_batch([_row(**{**EPISODE, col: bad})])
    with pytest.raises(schema.SchemaError, match="schema mismatch"):  # a column of the wrong type
        bad_type = schema.make_batch([_row(**EPISODE)])
        cols = [pa.array([[1.0] * 6]) if n == "loss_mask" else bad_type.column(n) for n in bad_type.schema.names]
        schema.decode_batch(schema.encode_batch(pa.RecordBatch.from_arrays(cols, names=bad_type.schema.names)))


def test_rollouts_carry_the_gapped_mask_and_per_token_staleness() -> None:
    single = ScoredGroup.from_rows([_row(group_id=1, policy_version=5, reward=1.0)])
    episode = ScoredGroup.from_rows([_row(**EPISODE, reward=1.5)])
    ro = Rollouts.from_groups([single, episode], learner_version=6)
    assert ro.mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1]]
    assert ro.lengths.tolist() == [2, 3]  # trained tokens
    assert ro.staleness.tolist() == [1, 3]  # by the oldest token
    assert ro.staleness_grid().tolist() == [[1, 1, 0, 0, 0, 0], [3, 3, 0, 0, 0, 2]]
    rewards = outcome_token_rewards(ro.scores, ro.mask)
    assert rewards.tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.5]]  # on the last *trained* token


def test_outcome_reward_sits_on_the_last_model_token_before_a_trailing_gap() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0, 0.0], [0.0] * 6])
    assert outcome_token_rewards(torch.tensor([2.0, 5.0]), mask).tolist() == [[0, 0, 0, 2, 0, 0], [0] * 6]


def test_reward_worker_passes_env_rewards_through() -> None:
    from reward.worker import RewardWorker
    from tests.test_sockets import _cfg

    worker = RewardWorker(_cfg(), 0)
    try:
        batch = schema.make_batch([_row(**EPISODE, response_text="no digits"),
                                   _row(sample_index=1, response_text="1234", env_reward=None)])
        rewards, errors = worker.score(batch)
        assert rewards[0] == 1.5 and errors == [None, None]
        assert rewards[1] == pytest.approx(1.0)  # toy_digits scored the row without an env reward
    finally:
        worker.close()


def test_step_record_episode_metrics() -> None:
    from learner.orchestrator.record import episode_record

    groups = [ScoredGroup.from_rows([_row(**EPISODE, reward=1.5), _row(**{**EPISODE, "num_turns": 3,
                                                                          "tool_time_s": 0.75}, sample_index=1,
                                                                       reward=0.5)])]
    rec = episode_record(groups)
    assert rec == {"turns_mean": 2.5, "tool_calls_mean": 1.0, "tool_calls_total": 2.0, "tool_errors_total": 2.0,
                   "tool_time_s_mean": pytest.approx(0.5), "episode_reward_mean": 1.0, "observation_tokens": 6.0,
                   "episodes_across_syncs": 2.0}


def test_environment_config_is_validated() -> None:
    from asyncrl.config import ConfigError, validate_config

    base = {"model": {"path": "m"}, "data": {"train": "t", "max_prompt_tokens": 100}}
    cfg = validate_config({**base, "environment": {"name": "arith_tools", "max_new_tokens_per_turn": 8}})
    assert cfg.sequence_tokens == 100 + 64 and cfg.turn_tokens == 8 and cfg.environment.tool_parser == "hermes"
    assert validate_config(base).sequence_tokens == 164 and validate_config(base).turn_tokens == 64
    for env, extra, says in (({"name": "x", "max_total_tokens": 100}, {}, "no room for a reply"),
                             ({"name": "x", "max_total_tokens": 500}, {"rollout": {"max_model_len": 400}},
                              "rollout.max_model_len"),
                             ({"name": "x"}, {"algorithm": {"overlong_buffer": 4}}, "overlong_buffer"),
                             ({"name": "x", "max_turn": 3}, {}, "environment.max_turn"),
                             ({"name": "x", "tool_parser": "xml"}, {}, "environment.tool_parser")):
        with pytest.raises(ConfigError, match=says):
            validate_config({**base, **extra, "environment": env})
