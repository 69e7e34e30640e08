"""The ``[algorithm]`` section: estimator, loss, KL, DAPO extras, off-policy correction, distillation.

The section is one flat model (the trainer reads ``cfg.algorithm.X``) composed of typed key
groups. Each group but the core one applies only under a condition on the core keys (its
:class:`Rule`): the critic's keys with ``advantage = "gae"``, the clip keys with a clipped loss,
the reward-KL keys with ``kl_in_reward``, ... A key of a group that does not apply, set
explicitly, is refused with an error naming the key, the condition and the value that fails it;
left at its default it is harmless. :data:`RULES` is the one table of what applies when
(docs/algorithms.md shows it)::

    AlgorithmSection(advantage="grpo", critic_lr=1e-3)
    # ValidationError: algorithm.critic_lr does not apply: the critic is used only with
    #   advantage = "gae" (here advantage = "grpo")

Names follow veRL so configs port over; docs/algorithms.md gives each formula.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from asyncrl.config_base import _Section

log = logging.getLogger("asyncrl.config")

AdvantageName = Literal["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax", "gae"]
LossName = Literal["ppo", "gspo", "reinforce"]
AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "kl", "k2", "mse", "k3", "low_var_kl", "abs",
                 "k1+", "kl+", "k2+", "mse+", "k3+", "low_var_kl+", "abs+"]
CorrectionName = Literal["none", "tis", "seq_tis", "mis", "seq_mis", "decoupled", "icepop", "seq_icepop"]


class CoreKeys(_Section):
    """Keys every run reads; they decide which other groups apply."""

    advantage: AdvantageName = "grpo"
    loss: LossName = "ppo"
    loss_agg_mode: AggMode = "token-mean"
    entropy_coef: float = Field(0.0, ge=0)
    kl_loss_coef: float = Field(0.0, ge=0, description="KL(current||reference) as a loss term.")
    kl_in_reward: bool = Field(False, description="Subtract beta*KL(behaviour||reference) per token from the reward.")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal.")
    overlong_buffer: int = Field(0, ge=0, description="DAPO soft overlong penalty buffer (0: off).")
    correction: CorrectionName = Field("tis", description="Off-policy correction (veRL's rollout correction "
                                       "is off by default).")
    stale_policy: Literal["drop", "reweight"] = Field(
        "drop", description="Samples older than learner.max_staleness that still arrive.")
    old_logprobs: Literal["recompute", "behaviour"] = Field(
        "recompute", description="PPO old (proximal) log-probs: recompute = the learner's weights before the "
        "step's first update (one no-grad pass when learner.ppo_mini_batches or ppo_epochs > 1); behaviour = "
        "the generator's log-probs (veRL bypass mode: the ratio and clip are taken against the behaviour "
        "policy and `correction` sees ratio 1).")
    distill_teacher: Path | None = Field(
        None, description="On-policy distillation: an HF model directory sharing the policy's tokenizer; each "
        "sampled token earns distill_coef * (log p_teacher - log p_student) in the token rewards.")


class GRPOKeys(_Section):
    norm_adv_by_std: bool = Field(True, description="grpo: divide by the group std (False = Dr.GRPO).")
    adv_eps: float = Field(1e-6, gt=0, description="grpo: added to the group std.")


class DiscountKeys(_Section):
    gamma: float = Field(1.0, ge=0, le=1, description="reinforce_pp, gae: discount of the return.")


class CriticKeys(_Section):
    lam: float = Field(1.0, ge=0, le=1, description="gae: the GAE lambda.")
    critic_lr: float = Field(1e-5, gt=0, description="gae: value model learning rate.")
    value_clip: float = Field(0.5, gt=0, description="gae: clip range of the value loss.")


class ClipKeys(_Section):
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0, description="DAPO clip-higher when above clip_low (DAPO's 0.28; "
                             "veRL's clip_ratio_high defaults to 0.2).")


class DualClipKeys(_Section):
    clip_c: float | None = Field(None, gt=1.0, description="Dual-clip constant (None: off; veRL's clip_ratio_c "
                                 "defaults to 3.0).")


class KLLossKeys(_Section):
    kl_loss_type: KLKind = Field("k3", description="k1/kl, k2/mse, k3/low_var_kl, abs; a '+' suffix keeps the "
                                 "value and takes the gradient of k2 (veRL's k3+ etc.).")


class KLRewardKeys(_Section):
    kl_reward_type: KLKind = "k1"
    kl_reward_mean: Literal["token", "sequence"] = Field(
        "token", description="The KL the adaptive controller reads: token = mean over the batch's valid tokens; "
        "sequence = mean of per-sequence means (veRL's apply_kl_penalty).")
    kl_coef: float = Field(0.001, ge=0, description="Initial beta for kl_in_reward.")
    kl_controller: Literal["fixed", "adaptive"] = "fixed"


class AdaptiveKLKeys(_Section):
    kl_target: float = Field(0.1, gt=0)
    kl_horizon: int = Field(10000, ge=1)


class DynamicSamplingKeys(_Section):
    dynamic_sampling_max_groups: int = Field(
        10, ge=1, description="Fail if more than this many batches' worth of groups are filtered for one step.")


class OverlongKeys(_Section):
    overlong_factor: float = Field(1.0, ge=0)


class CapKeys(_Section):
    is_cap: float = Field(2.0, ge=1.0, description="tis/seq_tis cap; decoupled filter bound (veRL's "
                          "rollout_is_threshold defaults to 2.0).")


class BoundKeys(_Section):
    is_lower: float = Field(0.5, gt=0, description="mis/seq_mis lower bound (of the ratio mis_ratio names); "
                            "icepop/seq_icepop lower bound of pi/mu.")
    is_upper: float = Field(2.0, gt=1.0, description="mis/seq_mis upper bound (of the ratio mis_ratio names); "
                            "icepop/seq_icepop upper bound of pi/mu.")


class MISKeys(_Section):
    mis_ratio: Literal["pi_over_mu", "mu_over_pi"] = Field(
        "pi_over_mu", description="Which ratio is_lower/is_upper bound for mis/seq_mis: pi_over_mu (asyncrl's "
        "meaning) or mu_over_pi (veRL's rollout_rs token_k1/seq_sum_k1 'lower_upper' thresholds). The same when "
        "is_lower = 1/is_upper.")


class DecoupledKeys(_Section):
    decoupled_filter: Literal["drop", "zero"] = Field(
        "drop", description="decoupled: tokens above is_cap leave the loss mask and its token count (drop, "
        "asyncrl's meaning) or stay in it with weight 0 (zero, AReaL's).")


class DistillKeys(_Section):
    distill_coef: float = Field(1.0, ge=0, description="Weight of the per-token distillation reward.")
    distill_task_weight: float = Field(1.0, ge=0, description="Weight of the task (reward function) score "
                                       "when distilling; 0 = distillation alone.")


@dataclass(frozen=True)
class Rule:
    """``keys`` (a group) apply only when ``test`` holds; ``when`` says so in config terms, ``on`` names
    the deciding keys (their values go into the error)."""

    keys: type[_Section]
    what: str
    when: str
    on: tuple[str, ...]
    test: Callable[[Any], bool]


_CLIPPED, _BOUNDED = ("ppo", "gspo"), ("mis", "seq_mis", "icepop", "seq_icepop")
RULES: tuple[Rule, ...] = (
    Rule(GRPOKeys, "group-std normalisation", 'advantage = "grpo"', ("advantage",),
         lambda a: a.advantage == "grpo"),
    Rule(DiscountKeys, "the discount", 'advantage = "reinforce_pp" or "gae"', ("advantage",),
         lambda a: a.advantage in ("reinforce_pp", "gae")),
    Rule(CriticKeys, "the critic", 'advantage = "gae"', ("advantage",), lambda a: a.advantage == "gae"),
    Rule(ClipKeys, "the ratio clip", 'loss = "ppo" or "gspo"', ("loss",), lambda a: a.loss in _CLIPPED),
    Rule(DualClipKeys, "the dual clip", 'loss = "ppo" (gspo and reinforce have no dual clip)', ("loss",),
         lambda a: a.loss == "ppo"),
    Rule(KLLossKeys, "the KL loss", "kl_loss_coef > 0", ("kl_loss_coef",), lambda a: a.kl_loss_coef > 0),
    Rule(KLRewardKeys, "the reward KL", "kl_in_reward = true", ("kl_in_reward",), lambda a: a.kl_in_reward),
    Rule(AdaptiveKLKeys, "the adaptive KL controller", 'kl_in_reward = true and kl_controller = "adaptive"',
         ("kl_in_reward", "kl_controller"), lambda a: a.kl_in_reward and a.kl_controller == "adaptive"),
    Rule(DynamicSamplingKeys, "dynamic sampling", "dynamic_sampling = true", ("dynamic_sampling",),
         lambda a: a.dynamic_sampling),
    Rule(OverlongKeys, "the overlong penalty", "overlong_buffer > 0", ("overlong_buffer",),
         lambda a: a.overlong_buffer > 0),
    Rule(CapKeys, "the importance-weight cap", 'correction = "tis", "seq_tis" or "decoupled"', ("correction",),
         lambda a: a.correction in ("tis", "seq_tis", "decoupled")),
    Rule(BoundKeys, "the ratio bounds", 'correction = "mis", "seq_mis", "icepop" or "seq_icepop"',
         ("correction",), lambda a: a.correction in _BOUNDED),
    Rule(MISKeys, "the masked-IS ratio", 'correction = "mis" or "seq_mis"', ("correction",),
         lambda a: a.correction in ("mis", "seq_mis")),
    Rule(DecoupledKeys, "the decoupled filter", 'correction = "decoupled"', ("correction",),
         lambda a: a.correction == "decoupled"),
    Rule(DistillKeys, "distillation", "distill_teacher set", ("distill_teacher",),
         lambda a: a.distill_teacher is not None),
)


class AlgorithmSection(DistillKeys, DecoupledKeys, MISKeys, BoundKeys, CapKeys, OverlongKeys,
                       DynamicSamplingKeys, AdaptiveKLKeys, KLRewardKeys, KLLossKeys, DualClipKeys, ClipKeys,
                       CriticKeys, DiscountKeys, GRPOKeys, CoreKeys):
    """Advantage estimator, policy loss, KL to a reference, DAPO extras, off-policy correction,
    distillation: the core keys plus every group of :data:`RULES`; a group's keys set where it does
    not apply are refused."""

    @model_validator(mode="after")
    def _check(self) -> AlgorithmSection:
        refused = [refusal(self, rule, key) for rule in RULES if not rule.test(self)
                   for key in rule.keys.model_fields if key in self.model_fields_set]
        if refused:
            raise ValueError("; ".join(refused))
        if self.correction in _BOUNDED and self.is_lower > self.is_upper:
            raise ValueError(f"algorithm.is_lower={self.is_lower} exceeds algorithm.is_upper={self.is_upper}")
        _warn_implicit_corrections(self)
        return self

    @property
    def uses_reference(self) -> bool:
        return self.kl_loss_coef > 0 or self.kl_in_reward

    def applicable(self) -> dict[str, Any]:
        """The keys this algorithm reads (core keys and the groups that apply), with their values."""
        skip = {key for rule in RULES if not rule.test(self) for key in rule.keys.model_fields}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}


def refusal(a: AlgorithmSection, rule: Rule, key: str) -> str:
    here = ", ".join(f"{k} = {_toml(getattr(a, k))}" for k in rule.on)
    return f"algorithm.{key} does not apply: {rule.what} is used only with {rule.when} (here {here})"


def _toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, (str, Path)) else repr(value)


def _warn_implicit_corrections(a: AlgorithmSection) -> None:
    """Deprecation warnings where a config relies on an asyncrl meaning that differs from veRL's/AReaL's.

    Silent when the key is set explicitly, and for mis/seq_mis when the bounds are reciprocal
    (both meanings coincide). Every process reads the TOML, so each one warns once.
    """
    asymmetric = abs(a.is_lower * a.is_upper - 1.0) > 1e-9
    if a.correction in ("mis", "seq_mis") and asymmetric and "mis_ratio" not in a.model_fields_set:
        log.warning("algorithm.correction=%r: is_lower=%g / is_upper=%g bound pi/mu (asyncrl's meaning); veRL's "
                    "rollout_rs thresholds bound mu/pi and differ here because is_lower != 1/is_upper. Relying "
                    "on the default is deprecated: set algorithm.mis_ratio = 'pi_over_mu' to keep this meaning or "
                    "'mu_over_pi' for veRL's", a.correction, a.is_lower, a.is_upper)
    if a.correction == "decoupled" and "decoupled_filter" not in a.model_fields_set:
        log.warning("algorithm.correction='decoupled': tokens above is_cap leave the loss's token count (asyncrl's "
                    "meaning); AReaL keeps them with weight 0. Relying on the default is deprecated: set "
                    "algorithm.decoupled_filter = 'drop' to keep this meaning or 'zero' for AReaL's")
