"""On-policy distillation: a frozen teacher scores the tokens the student sampled.

The per-token signal is ``log p_teacher(y_t) - log p_student(y_t)`` of each sampled token
``y_t`` (``log p_student`` = the generator's behaviour log-probs), the negative of the
per-token estimate of the reverse KL ``KL(student || teacher)``: maximising it pulls the
student toward the teacher where the student puts its mass (Agarwal et al. 2024, "GKD";
Thinking Machines 2025, "On-policy distillation")::

    rewards = task_weight * outcome_rewards + coef * (teacher - behaviour) * mask

The term sits in the token-level rewards like veRL's KL-in-reward penalty, so every
advantage estimator takes it (outcome estimators read the per-sequence sum). The teacher is
loaded on the learner ranks like the reference model (FSDP2-sharded, frozen) and scored in
the same no-grad phase, over the same packed micro-batches (docs/algorithms.md says why not a
separate scoring worker).
"""

from __future__ import annotations

from torch import Tensor
from transformers import PreTrainedModel

from asyncrl.config import RunConfig
from learner.fsdp.model import load_policy


def distill_rewards(behaviour: Tensor, teacher: Tensor, mask: Tensor, coef: float) -> tuple[Tensor, float]:
    """The ``[N, T]`` per-token reward term ``coef * (teacher - behaviour) * mask`` and the
    batch's reverse-KL estimate (mean over valid tokens of ``behaviour - teacher``).

    ``behaviour``, ``teacher``: ``[N, T]`` log-probs of the sampled tokens under the student
    (generator) and the teacher; ``mask``: ``[N, T]`` 1 on response tokens.
    """
    diff = (teacher - behaviour) * mask
    reverse_kl = float(-diff.sum() / mask.sum().clamp(min=1))
    return coef * diff, reverse_kl


def load_teacher(cfg: RunConfig) -> PreTrainedModel | None:
    """The frozen, sharded teacher of ``algorithm.distill_teacher`` (None when unset)."""
    path = cfg.algorithm.distill_teacher
    if path is None:
        return None
    teacher, _ = load_policy(path, cfg.model.learner_dtype, cfg.learner)
    return teacher.requires_grad_(False).eval()
