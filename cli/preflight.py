"""Pre-flight checks of ``asyncrl up``: fail before any process starts when the model, data,
reward function, environment, teacher, placement or transport keys are unusable.

It lives next to the CLI (not in ``asyncrl/``) because it reaches into the process packages
(reward functions, checkpoints): ``asyncrl/`` holds contracts and never imports them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from asyncrl.config import RunConfig

log = logging.getLogger("asyncrl.preflight")


def check_inputs(cfg: RunConfig) -> None:
    """Fail before any process starts when the model or data files are unusable."""
    from asyncrl.data.dataset import load_prompts
    from asyncrl.data.format import DataError, require_model_dir

    if cfg.reward.function is not None:
        from reward.functions import get_reward_fn
        try:
            get_reward_fn(cfg.reward.function)
        except Exception as e:  # unknown name, import error, missing attribute
            raise DataError(f"reward.function: {e}") from None
    if cfg.environment.name is not None:
        from rollout.episode import load_environment_class

        load_environment_class(cfg.environment.name)  # DataError naming environment.name
    if cfg.reward.model_path is not None:
        require_model_dir(cfg.reward.model_path, "reward.model_path")
    require_model_dir(cfg.model.path, "model.path")  # the error says which command makes it
    if cfg.algorithm.distill_teacher is not None:
        _check_teacher(cfg.algorithm.distill_teacher, cfg.model.path)
    from asyncrl.placement import make_plan
    from asyncrl.procplan import check_model_fits

    check_model_fits(cfg)
    make_plan(cfg)  # PlacementError: more devices than visible, unintended overlap
    _check_transport(cfg)
    if cfg.run.resume:
        from asyncrl.errors import CheckpointError
        from learner.fsdp.checkpoint import Checkpointer

        latest = Checkpointer(cfg.run.dir / "checkpoints", cfg.learner.keep_checkpoints).latest()
        if latest is None:
            raise CheckpointError(f"--resume: no complete checkpoint under {cfg.run.dir / 'checkpoints'}")
        step = int(latest.name.removeprefix("step_"))
        if step >= cfg.run.max_steps:
            raise CheckpointError(f"--resume: {latest} is at step {step}, and run.max_steps={cfg.run.max_steps} is "
                                  f"the total: nothing left to train; continue with a larger total, e.g. "
                                  f"`--resume --max-steps {2 * step}`")
    files = [("data.train", cfg.data.train), ("data.test", cfg.data.test)]
    files += [(f"data.val[{i}].path", v.path) for i, v in enumerate(cfg.data.val)]
    for key, path in files:
        if path is not None:
            try:
                load_prompts(path)
            except DataError as e:
                raise DataError(f"{key}: {e}") from None


def _check_teacher(teacher: Path, student: Path) -> None:
    """Distillation compares log-probs token by token: the teacher must use the policy's tokenizer."""
    from transformers import AutoTokenizer

    from asyncrl.data.format import DataError, require_model_dir

    require_model_dir(teacher, "algorithm.distill_teacher")
    vocab: dict[str, dict[str, int]] = {}
    for key, path in (("algorithm.distill_teacher", teacher), ("model.path", student)):
        try:
            vocab[key] = AutoTokenizer.from_pretrained(path).get_vocab()
        except Exception as e:  # missing or unreadable tokenizer files
            raise DataError(f"{key}: no usable tokenizer in {path}: {e}") from None
    t, s = vocab["algorithm.distill_teacher"], vocab["model.path"]
    if t != s:
        differ = sorted(set(t.items()) ^ set(s.items()), key=str)[:3]
        raise DataError(f"algorithm.distill_teacher: {teacher} has a different tokenizer from model.path {student} "
                        f"({len(t)} vs {len(s)} tokens; e.g. {differ}); distillation needs the same vocabulary")


def _check_transport(cfg: RunConfig) -> None:
    """CURVE key files must exist; binding beyond loopback without CURVE gets a warning."""
    from asyncrl.config import parse_address
    from asyncrl.transport import is_loopback

    t = cfg.transport
    if t.curve_dir is not None:
        from asyncrl.curve import CurveKeys

        keys = CurveKeys(t.curve_dir)
        keys.server()
        keys.client()
        return
    hosts = {t.bind_host} if t.bind_host else {parse_address(a)[0] for a in [t.dispatch, t.trajectories, *t.rewards]}
    open_hosts = sorted(h for h in hosts if not is_loopback(h))
    if open_hosts:
        log.warning("sockets bind to %s without authentication: anyone who can reach them can send messages "
                    "(set transport.curve_dir; create keys with `asyncrl keys --out DIR`)", ", ".join(open_hosts))
