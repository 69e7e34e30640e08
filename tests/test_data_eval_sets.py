"""``asyncrl data math500`` and ``asyncrl data aime``: public-release layouts in, veRL test sets out."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from asyncrl.data.dataset import load_prompts
from cli.data.commands import app
from reward.functions import default_reward_name, get_reward_fn

MATH500 = [  # HuggingFaceH4/MATH-500's columns
    {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "... $\\boxed{\\frac{3}{4}}$",
     "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Solve $x+1=3$.", "solution": "$x=\\boxed{2}$", "answer": "2", "subject": "Algebra", "level": 1,
     "unique_id": "test/algebra/2.json"},
]
AIME = {"id": [60, 61], "problem": ["Find the remainder ...", "How many ..."], "solution": ["...", "..."],
        "answer": [204, 25], "url": ["https://example.org/60", "https://example.org/61"]}  # aimo-validation-aime


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def test_math500_from_jsonl_graded_by_the_math_reward(tmp_path: Path) -> None:
    src = tmp_path / "test.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in MATH500))
    code, out = _run("math500", "--source", str(src), "--out", str(tmp_path / "math500"))
    assert code == 0, out
    assert "test.parquet (2 rows)" in out and "selects the 'math' reward" in out
    rows = load_prompts(tmp_path / "math500" / "test.parquet")
    assert [r.ground_truth for r in rows] == ["\\frac{3}{4}", "2"]
    assert rows[0].data_source == "HuggingFaceH4/MATH-500" and "\\boxed{}" in rows[0].messages[0]["content"]
    assert rows[0].extra_info["subject"] == "Prealgebra" and rows[0].extra_info["level"] == "2"
    score = get_reward_fn(default_reward_name(rows[0].data_source))
    assert score(rows[0].data_source, "so it is \\boxed{0.75}", rows[0].ground_truth, {}) == 1.0
    assert score(rows[1].data_source, "x = \\boxed{3}", rows[1].ground_truth, {}) == 0.0


def test_aime_from_parquet_folder_with_integer_answers(tmp_path: Path) -> None:
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table(AIME), folder / "train-00000-of-00001.parquet")
    code, out = _run("aime", "--source", str(tmp_path / "hub"), "--out", str(tmp_path / "aime"), "--limit", "1")
    assert code == 0, out
    (row,) = load_prompts(tmp_path / "aime" / "test.parquet")
    assert row.ground_truth == "204" and row.data_source == "aime" and row.extra_info["id"] == "60"
    score = get_reward_fn(default_reward_name("aime"))
    assert score("aime", "The answer is \\boxed{204}.", row.ground_truth, {}) == 1.0


def test_eval_set_bad_sources_exit_2_naming_file_and_column(tmp_path: Path) -> None:
    src = tmp_path / "noanswer.jsonl"
    src.write_text(json.dumps({"problem": "p", "solution": "s"}) + "\n")
    code, out = _run("math500", "--source", str(src), "--out", str(tmp_path / "o"))
    assert code == 2 and "noanswer.jsonl" in out and "no column 'answer'" in out
    src = tmp_path / "noproblem.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": [1]}), src)
    code, out = _run("aime", "--source", str(src), "--out", str(tmp_path / "o"))
    assert code == 2 and "noproblem.parquet" in out and "no column 'problem'" in out
    src = tmp_path / "empty_answer.jsonl"
    src.write_text(json.dumps({"problem": "p", "answer": " "}) + "\n")
    code, out = _run("aime", "--source", str(src), "--out", str(tmp_path / "o"))
    assert code == 2 and "row 0, column 'answer' is empty" in out
    code, out = _run("aime", "--source", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and "missing.jsonl" in out
    code, out = _run("aime", "--source", str(tmp_path), "--out", str(tmp_path / "o"))  # several files
    assert code == 2 and "expected one data file" in out
