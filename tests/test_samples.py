"""Sample dumps (learner/samples.py) and ``asyncrl samples`` (cli/samples.py): the unit pieces on
hand-made groups, then the dumps of real runs (tiny_run: asynchronous; sync_run: on-policy, where
the learner's log-probs must equal the generator's)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from asyncrl.transport.items import ScoredGroup
from learner.samples import COLUMNS, SampleDumps
from tests.conftest import SYNC_STEPS, TINY_VAL_SET, SharedRun
from tests.e2e import REPO
from tests.test_wire import _row


class _Tok:
    """Decodes ids as text (the dumps' only use of a tokenizer)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(f"t{i}" for i in ids)


def _groups() -> list[ScoredGroup]:
    a = ScoredGroup.from_rows([_row(sample_index=0), _row(sample_index=1, response_text="xy")])
    a = a.with_rewards([1.0, 0.0], [None, "parse error"])
    b = ScoredGroup.from_rows([_row(group_id=4, prompt_id=8, policy_version=1, policy_version_end=1),
                               _row(group_id=4, prompt_id=8, sample_index=1, is_baseline=True)])
    return [a, b.with_rewards([0.5, 0.25], [None, None])]


def test_train_dump_rows_and_the_learner_gap(tmp_path: Path) -> None:
    dumps = SampleDumps(tmp_path, every=5, tokenizer=_Tok())
    assert [dumps.due(s) for s in (4, 5, 10)] == [False, True, True]
    path = dumps.train(5, _groups(), learner_version=3, logprob_gap=torch.tensor([0.01, -0.02, float("-inf")]))
    assert path == tmp_path / "samples" / "train_step_000005.parquet"
    table = pq.read_table(path)
    assert table.schema.names == list(COLUMNS)
    rows = table.to_pylist()
    assert len(rows) == 3  # the baseline row of the second group is not a trained sample
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.5]
    assert rows[1]["reward_error"] == "parse error" and rows[1]["response"] == "xy"
    assert [r["staleness"] for r in rows] == [1, 1, 2] and rows[0]["prompt"] == "t1 t2 t3"
    assert rows[0]["logprob_gap"] == pytest.approx(0.01) and rows[2]["logprob_gap"] is None
    val = SampleDumps(tmp_path, every=5, tokenizer=_Tok()).validation(5, {"arith": _groups()[:1]}, 3)
    assert val is not None and [r["val_set"] for r in pq.read_table(val).to_pylist()] == ["arith", "arith"]
    assert SampleDumps(tmp_path / "off", every=0, tokenizer=_Tok()).validation(5, {"a": _groups()}, 3) is None


def _samples(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "samples", str(run_dir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})


def test_samples_cli_worst_and_errors(tmp_path: Path) -> None:
    SampleDumps(tmp_path, every=1, tokenizer=_Tok()).train(1, _groups(), 3)
    SampleDumps(tmp_path, every=1, tokenizer=_Tok()).train(2, _groups()[:1], 3)
    res = _samples(tmp_path, "--step", "1", "--worst", "1")
    assert res.returncode == 0, res.stderr
    assert "1 of 3 samples" in res.stdout and "parse error" in res.stdout and "reward 0 " in res.stdout
    newest = _samples(tmp_path)
    assert "train_step_000002.parquet: 2 of 2 samples" in newest.stdout.replace("\n", "")
    missing = _samples(tmp_path, "--step", "7")
    assert missing.returncode == 2 and "--step 7" in missing.stderr and "steps: 1, 2" in missing.stderr
    none = _samples(tmp_path / "nothing", "--split", "val")
    assert none.returncode == 2 and "no val sample dumps" in none.stderr and "Traceback" not in none.stderr


@pytest.mark.slow
def test_dumps_of_an_asynchronous_run(tiny_run: SharedRun) -> None:
    """tiny_run: 20 steps, 4 prompts x 8 samples each, default logging.samples_every=10."""
    assert tiny_run.returncode == 0, tiny_run.stdout[-4000:]
    folder = tiny_run.run_dir / "samples"
    assert sorted(p.name for p in folder.glob("train_*")) == ["train_step_000010.parquet", "train_step_000020.parquet"]
    rows = pq.read_table(folder / "train_step_000020.parquet").to_pylist()
    assert len(rows) == 32 and {r["learner_version"] for r in rows} == {19}
    assert all(0 <= r["staleness"] <= 2 and r["prompt"] and math.isfinite(r["logprob_gap"]) for r in rows)
    assert sorted(p.name for p in folder.glob("val_*")) == [f"val_step_{s:06d}.parquet" for s in (0, 10, 20)]
    val = pq.read_table(folder / "val_step_000020.parquet").to_pylist()
    assert {r["split"] for r in val} == {"val"}
    assert sum(r["val_set"] == "test" for r in val) == 16  # data.test: greedy, one reply each
    assert sum(r["val_set"] == TINY_VAL_SET for r in val) == 8 * 4  # [[data.val]]: 8 prompts x 4 replies
    res = _samples(tiny_run.run_dir, "--worst", "3")
    assert res.returncode == 0 and "3 of 32 samples" in res.stdout, res.stderr


@pytest.mark.slow
def test_on_policy_dumps_show_no_gap(sync_run: SharedRun) -> None:
    """sync_run is on-policy (max_staleness 0) and writes a dump every 3 steps: the learner's log-probs
    of each sample equal the generator's (fp32), so the dumped gap is ~0."""
    assert sync_run.returncode == 0, sync_run.stdout[-4000:]
    for step in range(3, SYNC_STEPS + 1, 3):
        rows = pq.read_table(sync_run.run_dir / "samples" / f"train_step_{step:06d}.parquet").to_pylist()
        assert all(r["staleness"] == 0 for r in rows)
        assert max(abs(r["logprob_gap"]) for r in rows) < 1e-3
