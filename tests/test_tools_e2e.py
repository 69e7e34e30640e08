"""End to end: ``asyncrl up configs/tiny_cpu_tools.toml`` — multi-turn episodes with the calculator,
through real vLLM, ZeroMQ, the reward worker and the FSDP2 learner, to the step limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import data_overrides
from tests.e2e import REPO, read_metrics, run_up

pytestmark = pytest.mark.slow

STEPS = 3


@pytest.fixture(scope="module")
def arith_tools_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.data.arith_tools import write_arith_tools

    out = tmp_path_factory.mktemp("data") / "arith_tools"
    write_arith_tools(out, n_train=64, n_test=8, seed=0)
    return out


def test_tiny_cpu_tools_runs_multi_turn_episodes(tiny_model_dir: Path, arith_tools_dir: Path, tmp_path: Path) -> None:
    """Every step trains on episodes of several turns with gapped loss masks; tool calls were
    executed and their errors counted in the metrics; the dumped trajectories show it per token."""
    run_dir = tmp_path / "run"
    res = run_up(REPO / "configs/tiny_cpu_tools.toml", run_dir,
                 data_overrides(tiny_model_dir, arith_tools_dir) + ["learner.val_prompts=2"], max_steps=STEPS,
                 timeout_s=300)
    assert res.returncode == 0, res.stdout[-6000:]
    steps = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    for r in steps:
        assert r["turns_mean"] > 1.5 and r["tool_calls_total"] > 0 and r["tool_errors_total"] > 0
        assert r["observation_tokens"] > 0 and 0 < r["tool_time_s_mean"] < 10
        assert r["tokens"] < r["samples"] * 3 * 16 + 1  # trained tokens: the model's turns only
        assert 0 <= r["episodes_across_syncs"] <= r["samples"]
    val = [r for r in read_metrics(run_dir) if "val_accuracy" in r]
    assert [r["step"] for r in val] == [0, STEPS]
    for r in val:  # EagerArithTools reads every reply as a calculator call
        assert r["val_tool_call_rate"] == 1.0 and r["val_turns_mean"] > 1 and r["val_tool_errors_mean"] > 0
    resolved = json.loads((run_dir / "resolved" / "rollout-0.json").read_text())
    assert resolved["environment"]["max_turns"] == 3
