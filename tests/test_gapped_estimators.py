"""Advantage estimators over multi-turn (gapped) loss masks, against veRL 0.9.1.

veRL's source here is ``verl/trainer/ppo/core_algos.py`` of the ``verl-0.9.1`` wheel (PyPI),
read on 2026-12-03: ``compute_gae_advantage_return`` skips observation tokens (mask 0): their
value and TD error do not propagate, the running ``lastgaelam`` and next value are carried across
them; REINFORCE++ (golden tests in tests/test_advantages.py) carries the running return across
them. Outcome estimators (GRPO, RLOO, ...) broadcast the sequence advantage to mask-1 tokens only.
At mask-0 positions veRL leaves the carried values in its tensors (they are never used: every loss
masks them); ours are 0 there, so the comparison is on mask-1 tokens.
"""

from __future__ import annotations

import pytest
import torch

from asyncrl.transport.items import ScoredGroup
from learner.algo.advantages import get_estimator
from learner.rollouts import Rollouts, outcome_token_rewards
from tests.test_wire import _row


def _verl_gae(token_level_rewards, values, response_mask, gamma, lam):
    """veRL 0.9.1 compute_gae_advantage_return, transcribed (masked_whiten: mean, unbiased
    variance over the mask, ``rsqrt(var + 1e-8)``, not multiplied by the mask)."""
    nextvalues, lastgaelam, reversed_adv = 0, 0, []
    for t in reversed(range(token_level_rewards.shape[-1])):
        delta = token_level_rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * response_mask[:, t] + (1 - response_mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * response_mask[:, t] + (1 - response_mask[:, t]) * lastgaelam
        reversed_adv.append(lastgaelam)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values
    n = response_mask.sum()
    mean = (advantages * response_mask).sum() / n
    var = (((advantages - mean) ** 2) * response_mask).sum() / n * n / (n - 1)
    return (advantages - mean) * torch.rsqrt(var + 1e-8), returns


def test_gae_on_a_gapped_mask_golden() -> None:
    # turn 1 (tokens 0-1), observation (2-3, mask 0: value and TD error skipped), turn 2 (4), padding.
    # gamma = lam = 1, V = [1, 2, 9, 9, 3, 0], outcome 1.0 on token 4:
    # delta4 = 1 + 0 - 3 = -2; A4 = -2. Token 1's next value is V4 = 3 (the gap is skipped):
    # delta1 = 0 + 3 - 2 = 1; A1 = 1 + A4 = -1. delta0 = 0 + 2 - 1 = 1; A0 = 1 + A1 = 0.
    rewards = torch.tensor([[0.0, 0.0, 5.0, 5.0, 1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0, 9.0, 9.0, 3.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    adv, ret = get_estimator("gae")(rewards, mask, index=None, values=values, gamma=1.0, lam=1.0)
    assert ret.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]  # A + V on mask-1 tokens: 0+1, -1+2, -2+3
    raw = torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)
    whitened = (raw - raw.mean()) * torch.rsqrt(raw.var() + 1e-8)
    assert torch.allclose(adv[mask > 0], whitened) and adv[mask == 0].abs().max() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_verl_on_random_gapped_masks(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(5, 12, generator=g, dtype=torch.float64)
    values = torch.randn(5, 12, generator=g, dtype=torch.float64)
    mask = (torch.rand(5, 12, generator=g) < 0.7).to(torch.float64)
    mask[:, -2:] = 0.0
    adv, ret = get_estimator("gae")(rewards, mask, index=None, values=values, gamma=0.95, lam=0.9)
    v_adv, v_ret = _verl_gae(rewards, values, mask, 0.95, 0.9)
    on = mask > 0
    assert torch.allclose(adv[on], v_adv[on], atol=1e-10) and torch.allclose(ret[on], v_ret[on], atol=1e-12)


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp_baseline"])
def test_outcome_estimators_broadcast_to_model_tokens_only(name: str) -> None:
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0, 0.0]])
    rewards = outcome_token_rewards(torch.tensor([1.0, 0.0]), mask)
    adv, _ = get_estimator(name)(rewards, mask, index=torch.tensor([0, 0]))
    assert adv[mask == 0].abs().max() == 0
    for row in range(2):  # one value over the row's model tokens
        assert len(set(adv[row][mask[row] > 0].tolist())) == 1
    assert adv[0, 0] > 0 > adv[1, 0]


def test_episode_rewards_reach_every_turn_through_rollouts() -> None:
    """From the wire to advantages: the outcome sits on the last model token, REINFORCE++ carries it
    back across the observation to the first turn, and nothing lands on observation tokens."""
    ep = {"response_token_ids": [4, 5, 6, 7, 8], "behaviour_logprobs": [-1.0, -1.0, 0.0, 0.0, -1.0],
          "loss_mask": [1, 1, 0, 0, 1], "token_versions": [2, 2, -1, -1, 2], "turn_starts": [0, 4],
          "policy_version": 2, "policy_version_end": 2}
    group = ScoredGroup.from_rows([_row(**ep, reward=1.0), _row(**ep, sample_index=1, reward=0.0)])
    ro = Rollouts.from_groups([group], learner_version=2)
    rewards = outcome_token_rewards(ro.scores, ro.mask)
    _, returns = get_estimator("reinforce_pp")(rewards, ro.mask, index=ro.index, gamma=1.0)
    assert returns.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0], [0.0] * 5]


def _episode_groups(obs_logprob: float, obs_version: int) -> list:
    """Two groups of 3-turn episodes: model tokens (version 1) and observation tokens between them
    whose behaviour log-prob and version are the test's to vary (the generator writes 0.0 and -1)."""
    from asyncrl import schema

    g = torch.Generator().manual_seed(0)
    out = []
    for gid in range(2):
        rows = []
        for i in range(4):
            turns = [1 + int(torch.randint(0, 4, (1,), generator=g)) for _ in range(3)]
            ids, beh, mask, versions, starts = [], [], [], [], []
            for k, n in enumerate(turns):
                starts.append(len(ids))
                ids += [20 + j for j in range(n)]
                beh += [-4.6] * n
                mask += [1] * n
                versions += [1] * n
                if k < 2:  # an observation of 3 tokens
                    ids += [40, 41, 42]
                    beh += [obs_logprob] * 3
                    mask += [0] * 3
                    versions += [obs_version] * 3
            rows.append(_row(group_id=gid, sample_index=i, prompt_token_ids=[2, 10 + gid, 11, 12],
                             response_token_ids=ids, behaviour_logprobs=beh, loss_mask=mask, token_versions=versions,
                             turn_starts=starts, policy_version=1, policy_version_end=1,
                             reward=float(torch.rand(1, generator=g)), env_reward=0.0, num_turns=3))
        out.append(schema.make_batch(rows))
    return out


@pytest.mark.parametrize("algo", [{"advantage": "grpo"}, {"advantage": "gae", "correction": "mis"},
                                  {"advantage": "reinforce_pp", "stale_policy": "reweight", "kl_loss_coef": 0.1}],
                         ids=["grpo", "gae-mis", "reinforce_pp-reweight-kl"])
def test_observation_tokens_never_move_the_update(tiny_model_dir, algo: dict) -> None:
    """The same episodes with different behaviour log-probs and versions on their observation tokens
    (garbage there must be ignored) give the same update and the same token-level metrics."""
    from tests.test_step import _trainer

    results = []
    for obs_logprob, obs_version in ((0.0, -1), (-9.0, -50)):
        torch.manual_seed(0)
        trainer = _trainer(tiny_model_dir, {"max_staleness": 0}, **algo)
        stats = trainer.step(_episode_groups(obs_logprob, obs_version), learner_version=2)
        results.append(([p.detach().full_tensor().clone() for p in trainer.policy.parameters()], stats))
    (p0, s0), (p1, s1) = results
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    for key in ("loss", "entropy", "logprob_abs_diff", "advantage_abs_mean", "response_len_mean"):
        assert s0[key] == s1[key], key
    assert s0["staleness_hist"] == {1: 8}  # by the model tokens (version 1), observations ignored
