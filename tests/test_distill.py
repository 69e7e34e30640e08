"""On-policy distillation (learner.algo.distill): golden token rewards and advantages against a
teacher scored here with a plain HF forward, the tokenizer check (exit 2), and a tiny
`asyncrl up` run whose reverse KL to an `asyncrl sft` teacher falls."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from asyncrl.config import ConfigError, load_config, validate_config
from cli.model.tiny import write_tiny_model
from tests.e2e import REPO, read_metrics, run_cli, run_up
from tests.test_step import _groups, _trainer

CONFIG = REPO / "configs" / "tiny_cpu_distill.toml"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other random weights, the tiny model's tokenizer."""
    return write_tiny_model(tmp_path_factory.mktemp("teacher") / "tiny", seed=1)


def _hf_logprobs(model_dir: Path, prompt: list[int], response: list[int]) -> list[float]:
    """log p(response_t | prompt, response_<t) from a plain, unsharded HF forward."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(response)]


def test_golden_rewards_and_grpo_advantages(tiny_model_dir: Path, teacher_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """rewards_t = 0.25 * score * [t = last] + 0.5 * (log p_teacher - behaviour); GRPO on their sum."""
    import learner.step

    seen = {}
    real = learner.step.get_estimator

    def spy(name):
        def fn(rewards, mask, **kw):
            seen["rewards"], seen["mask"] = rewards.clone(), mask.clone()
            seen["adv"], _ = out = real(name)(rewards, mask, **kw)
            return out
        return fn

    monkeypatch.setattr(learner.step, "get_estimator", spy)
    trainer = _trainer(tiny_model_dir, distill_teacher=str(teacher_dir), distill_coef=0.5, distill_task_weight=0.25)
    groups = _groups()
    stats = trainer.step(groups, learner_version=1)

    rows = [r for g in groups for r in g.to_pylist()]
    want_rewards, scores, kl_terms = [], [], []
    for r in rows:
        t_lp = _hf_logprobs(teacher_dir, r["prompt_token_ids"], r["response_token_ids"])
        beh = r["behaviour_logprobs"]
        per_tok = [0.5 * (t - b) for t, b in zip(t_lp, beh)]
        per_tok[-1] += 0.25 * r["reward"]
        want_rewards.append(per_tok)
        scores.append(sum(per_tok))
        kl_terms += [b - t for t, b in zip(t_lp, beh)]
    for i, per_tok in enumerate(want_rewards):
        n = len(per_tok)
        assert seen["rewards"][i, :n].tolist() == pytest.approx(per_tok, abs=1e-4)
        assert seen["rewards"][i, n:].abs().sum() == 0
    assert stats["distill_reverse_kl"] == pytest.approx(sum(kl_terms) / len(kl_terms), abs=1e-4)
    # GRPO by hand: (s - group mean) / (unbiased group std + 1e-6) on every valid token
    for i, r in enumerate(rows):
        group = [s for s, q in zip(scores, rows) if q["group_id"] == r["group_id"]]
        mean = sum(group) / len(group)
        std = (sum((s - mean) ** 2 for s in group) / (len(group) - 1)) ** 0.5
        n = len(want_rewards[i])
        want = (scores[i] - mean) / (std + 1e-6)
        assert seen["adv"][i, :n].tolist() == pytest.approx([want] * n, abs=1e-3)


def test_task_weight_needs_a_teacher() -> None:
    with pytest.raises(ConfigError, match="algorithm.distill_task_weight"):
        validate_config({"model": {"path": "m"}, "data": {"train": "t"}, "algorithm": {"distill_task_weight": 0}})
    assert not validate_config({"model": {"path": "m"}, "data": {"train": "t"}}).algorithm.distill_teacher


def test_teacher_with_another_tokenizer_exits_2(tiny_model_dir: Path, teacher_dir: Path, tmp_path: Path) -> None:
    from cli.preflight import _check_teacher

    _check_teacher(teacher_dir, tiny_model_dir)  # same tokenizer: passes
    other = tmp_path / "other"
    shutil.copytree(teacher_dir, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    res = subprocess.run([sys.executable, "-m", "cli.main", "up", str(CONFIG), "--dry-run",
                          "--set", f"model.path={tiny_model_dir}", "--set", f"algorithm.distill_teacher={other}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "algorithm.distill_teacher" in res.stdout + res.stderr and "different tokenizer" in res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.extended  # ~150 s (an SFT teacher, then 20 steps): make test-all; the golden test above is in make test
def test_distillation_lowers_reverse_kl(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The teacher: the tiny model after 40 `asyncrl sft` steps on worked arithmetic answers.
    Distillation alone (task weight 0), 20 learner steps through `asyncrl up`."""
    from cli.data.arith import write_arith, write_arith_supervised

    draw = dict(n_train=400, n_test=32, min_value=0, max_value=20, ops="+", seed=0)
    sft_train, sft_test = write_arith_supervised(tmp_path / "arith_sft", "sft", **draw)
    rl_train, rl_test = write_arith(tmp_path / "arith", **draw)
    res = run_cli("sft", REPO / "configs" / "sft" / "tiny_sft.toml", tmp_path / "sft",
                  [f"model.path={tiny_model_dir}", f"data.train={sft_train}", f"data.test={sft_test}",
                   "train.eval_every=0", "train.checkpoint_every=0"], max_steps=40)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    teacher = tmp_path / "sft" / "checkpoints" / "final"
    run_dir = tmp_path / "run"
    res = run_up(CONFIG, run_dir, [f"model.path={tiny_model_dir}", f"algorithm.distill_teacher={teacher}",
                                   f"data.train={rl_train}", f"data.test={rl_test}", "learner.val_every=0"],
                 max_steps=20, timeout_s=300)
    assert res.returncode == 0, res.stdout[-6000:]
    steps = [r for r in read_metrics(run_dir) if "distill_reverse_kl" in r]
    assert len(steps) == 20
    kl = [r["distill_reverse_kl"] for r in steps]
    first, last = sum(kl[:5]) / 5, sum(kl[-5:]) / 5
    print(f"distill: reverse KL {first:.3f} -> {last:.3f}, toy reward {steps[0]['reward_mean']:.3f} -> "
          f"{steps[-1]['reward_mean']:.3f} in {steps[-1]['time_s']:.0f}s")
    assert last < 0.8 * first, f"reverse KL to the teacher did not fall: {first:.3f} -> {last:.3f}"
    assert load_config(CONFIG).algorithm.distill_task_weight == 0
