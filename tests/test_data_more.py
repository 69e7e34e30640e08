"""``asyncrl data math / custom / inspect`` and ``--max-prompt-tokens``, from small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from asyncrl.data.dataset import load_prompts
from asyncrl.data.format import DataError
from cli.data.commands import app
from cli.data.custom import convert_custom
from cli.data.filter import LengthFilter, make_filter
from cli.data.inspect import inspect_file
from cli.data.math import DATA_SOURCE, INSTRUCTION, convert_math
from reward.functions import default_reward_name, get_reward_fn

MATH_ROWS = [
    {"problem": f"Compute ${i} + {i}$.", "solution": f"We get $\\boxed{{\\frac{{{2 * i}}}{{1}}}}$.",
     "level": f"Level {i % 5 + 1}", "type": "Algebra"}
    for i in range(10)
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli.model.tiny import build_char_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_char_tokenizer().save_pretrained(path)  # one token per character, ChatML template
    return path


def test_math_from_jsonl_matches_verl_preprocessing(tmp_path: Path) -> None:
    rows = [dict(r) for r in MATH_ROWS]
    rows[4]["answer"] = "8"  # MATH-500 style: the answer column wins over the solution
    results = convert_math(str(_jsonl(tmp_path / "math.jsonl", rows)), tmp_path / "out", test_fraction=0.2, seed=1)
    assert [(r.split, r.rows, r.dropped) for r in results] == [("train", 8, 0), ("test", 2, 0)]
    loaded = load_prompts(results[0].path) + load_prompts(results[1].path)
    assert len({r.messages[0]["content"] for r in loaded}) == 10
    for row in loaded:
        assert row.data_source == DATA_SOURCE == "DigitalLearningGmbH/MATH-lighteval"
        problem = row.messages[0]["content"].removesuffix(" " + INSTRUCTION)
        i = int(problem.split("$")[1].split(" ")[0])
        assert row.messages == [{"role": "user", "content": MATH_ROWS[i]["problem"] + " " + INSTRUCTION}]
        assert row.ground_truth == ("8" if i == 4 else f"\\frac{{{2 * i}}}{{1}}")  # nested braces kept
        assert row.extra_info["level"] == MATH_ROWS[i]["level"] and row.extra_info["type"] == "Algebra"
        reward = get_reward_fn(default_reward_name(row.data_source))
        assert reward(row.data_source, f"so \\boxed{{{2 * i}}}", row.ground_truth, {}) == 1.0
    assert INSTRUCTION == "Let's think step by step and output the final answer within \\boxed{}."
    assert pq.read_table(results[0].path).column("ability").to_pylist()[0] == "math"


def test_math_from_directory_with_data_source_and_limit(tmp_path: Path) -> None:
    folder = tmp_path / "MATH-500"
    folder.mkdir()
    rows = [{"problem": f"p{i}", "solution": "...", "answer": i, "subject": "Geometry", "level": 3,
             "unique_id": f"test/geometry/{i}.json"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows[:4]), folder / "train.parquet")
    _jsonl(folder / "test.jsonl", rows[4:])
    results = convert_math(str(folder), tmp_path / "out", data_source="HuggingFaceH4/MATH-500", limit=3)
    train, test = load_prompts(results[0].path), load_prompts(results[1].path)
    assert (len(train), len(test)) == (3, 2)
    assert train[1].ground_truth == "1" and train[1].data_source == "HuggingFaceH4/MATH-500"
    assert train[1].extra_info["level"] == "3" and train[1].extra_info["unique_id"] == "test/geometry/1.json"


def test_math_bad_input_names_file_column_and_row(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "q.jsonl", [{"question": "x", "solution": "\\boxed{1}"}] * 3)
    with pytest.raises(DataError, match=r"q.jsonl: no column 'problem'; columns: question, solution"):
        convert_math(str(src), tmp_path / "o")
    rows = [{"problem": "x", "solution": "\\boxed{1}"}, {"problem": "y", "solution": "2"}]
    src = _jsonl(tmp_path / "nobox.jsonl", rows)
    with pytest.raises(DataError, match=r"nobox.jsonl: (train|test) row 0, column 'solution': no \\boxed"):
        convert_math(str(src), tmp_path / "o", test_fraction=0.5)
    src = _jsonl(tmp_path / "type.jsonl", [{"problem": 3, "solution": "\\boxed{1}"}] * 2)
    with pytest.raises(DataError, match=r"type.jsonl: train row 0, column 'problem': expected a non-empty string"):
        convert_math(str(src), tmp_path / "o")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: the file has no rows"):
        convert_math(str(tmp_path / "empty.jsonl"), tmp_path / "o")
    with pytest.raises(DataError, match="source file not found: .*missing.parquet"):
        convert_math(str(tmp_path / "missing.parquet"), tmp_path / "o")


def test_custom_from_csv_jsonl_and_parquet(tmp_path: Path) -> None:
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("q,a,topic\n" + "".join(f"What is {i} squared?,{i * i},sq\n" for i in range(6)))
    results = convert_custom(str(csv_path), tmp_path / "c", prompt_column="q", answer_column="a",
                             template="[{topic}] {prompt} Answer in \\boxed{}.", system_prompt="Be brief.",
                             data_source="squares", test_fraction=0.5)
    rows = load_prompts(results[0].path)
    assert len(rows) == 3 and rows[0].data_source == "squares"
    system, user = rows[0].messages
    assert system == {"role": "system", "content": "Be brief."}
    i = int(user["content"].split("What is ")[1].split(" ")[0])
    assert user["content"] == f"[sq] What is {i} squared? Answer in \\boxed{{}}."
    assert rows[0].ground_truth == str(i * i)

    chat = [{"prompt": [{"role": "user", "content": f"hi {i}"}], "answer": float(i)} for i in range(4)]
    results = convert_custom(str(_jsonl(tmp_path / "chat.jsonl", chat)), tmp_path / "j", prompt_column="prompt",
                             answer_column="answer", test_fraction=0.25)
    rows = load_prompts(results[0].path)
    assert rows[0].messages[0]["content"].startswith("hi ") and rows[0].data_source == "custom"
    assert rows[0].ground_truth == rows[0].messages[0]["content"][3:]  # 2.0 -> "2"

    pq.write_table(pa.table({"text": ["a", "bb", "ccc"], "label": ["x", "y", "z"]}), tmp_path / "t.parquet")
    results = convert_custom(str(tmp_path / "t.parquet"), tmp_path / "p", prompt_column="text", answer_column="label")
    assert [r.rows for r in results] == [2, 1]


def test_custom_bad_input(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": "1"}, {"q": {"nested": 1}, "a": "2"}])
    with pytest.raises(DataError, match=r"d.jsonl: no column 'question' \(--prompt-column\); columns: q, a"):
        convert_custom(str(src), tmp_path / "o", prompt_column="question", answer_column="a")
    with pytest.raises(DataError, match=r"d.jsonl: (train|test) row 0, column 'q': expected a string or a list"):
        convert_custom(str(src), tmp_path / "o", prompt_column="q", answer_column="a", seed=3, test_fraction=0.5)
    src = _jsonl(tmp_path / "n.jsonl", [{"q": "a", "a": None}] * 2)
    with pytest.raises(DataError, match=r"n.jsonl: train row 0, column 'a': expected a non-empty string or number"):
        convert_custom(str(src), tmp_path / "o", prompt_column="q", answer_column="a")
    with pytest.raises(DataError, match="must contain {prompt}"):
        convert_custom(str(src), tmp_path / "o", prompt_column="q", answer_column="a", template="no field")
    (tmp_path / "h.csv").write_text("q,a\n")
    with pytest.raises(DataError, match="h.csv: the file has no rows"):
        convert_custom(str(tmp_path / "h.csv"), tmp_path / "o", prompt_column="q", answer_column="a")
    (tmp_path / "x.txt").write_text("q\n")
    with pytest.raises(DataError, match="x.txt: unsupported file type '.txt'"):
        convert_custom(str(tmp_path / "x.txt"), tmp_path / "o", prompt_column="q", answer_column="a")


def test_max_prompt_tokens_drops_long_prompts(tmp_path: Path, tokenizer_dir: Path) -> None:
    length_filter = make_filter(60, tokenizer_dir)
    assert isinstance(length_filter, LengthFilter)
    overhead = length_filter.lengths([[{"role": "user", "content": ""}]])[0]
    assert overhead == 19  # <|im_start|> "user\n" <|im_end|> "\n" <|im_start|> "assistant\n", one token per character
    rows = [{"q": "x" * n, "a": "1"} for n in range(20, 60)]  # lengths overhead+20 .. overhead+59
    results = convert_custom(str(_jsonl(tmp_path / "l.jsonl", rows)), tmp_path / "o", prompt_column="q",
                             answer_column="a", test_fraction=0.5, length_filter=length_filter)
    kept = sum(r.rows for r in results)
    assert kept == 60 - overhead - 20 + 1 and sum(r.dropped for r in results) == 40 - kept
    for result in results:
        assert all(len(r.messages[0]["content"]) + overhead <= 60 for r in load_prompts(result.path))
    limited = convert_custom(str(tmp_path / "l.jsonl"), tmp_path / "o2", prompt_column="q", answer_column="a",
                             test_fraction=0.5, length_filter=length_filter, limit=2)
    assert [r.rows for r in limited] == [2, 2]  # the limit counts prompts that fit
    with pytest.raises(DataError, match="all .* prompts of the train split are longer than --max-prompt-tokens 5"):
        convert_custom(str(tmp_path / "l.jsonl"), tmp_path / "o3", prompt_column="q", answer_column="a",
                       length_filter=make_filter(5, tokenizer_dir))
    with pytest.raises(DataError, match="needs --tokenizer"):
        make_filter(10, None)
    with pytest.raises(DataError, match=f"--tokenizer {tmp_path / 'nope'}: not a directory"):
        make_filter(10, tmp_path / "nope")
    with pytest.raises(DataError, match=f"--tokenizer {tmp_path}: cannot load a tokenizer"):
        make_filter(10, tmp_path)


def test_cli_filters_arith_gsm8k_and_math(tmp_path: Path, tokenizer_dir: Path) -> None:
    runner = CliRunner()
    opts = ["--max-prompt-tokens", "66", "--tokenizer", str(tokenizer_dir)]
    # "What is 7 + 5? Put the final answer after ####." is 47 characters, 66 tokens with the template:
    # sums of one-digit operands fit, sums with a two-digit operand (10..12) do not.
    res = runner.invoke(app, ["arith", "--out", str(tmp_path / "a"), "--n-train", "40", "--n-test", "10",
                              "--max-value", "12", *opts])
    assert res.exit_code == 0, res.output
    kept = load_prompts(tmp_path / "a" / "train.parquet")
    assert 0 < len(kept) < 40 and "dropped" in res.output
    assert all(r.extra_info["a"] < 10 and r.extra_info["b"] < 10 for r in kept)
    assert max(make_filter(66, tokenizer_dir).lengths([r.messages for r in kept])) == 66
    gsm = [{"question": "q" * n, "answer": "x #### 3"} for n in range(10)]
    gsm.append({"question": "q" * 500, "answer": "#### 1"})
    res = runner.invoke(app, ["gsm8k", "--source", str(_jsonl(tmp_path / "g.jsonl", gsm)), "--out",
                              str(tmp_path / "g"), "--test-fraction", "0.5", "--max-prompt-tokens", "150",
                              "--tokenizer", str(tokenizer_dir)])
    assert res.exit_code == 0, res.output
    total = sum(pq.read_metadata(tmp_path / "g" / f"{s}.parquet").num_rows for s in ("train", "test"))
    assert total == 10 and "dropped 1 prompts over 150 tokens" in res.output
    res = runner.invoke(app, ["math", "--source", str(_jsonl(tmp_path / "m.jsonl", MATH_ROWS)), "--out",
                              str(tmp_path / "m"), "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "train.parquet (2 rows)" in res.output and "selects the 'math' reward" in res.output


def test_inspect_reports_schema_rows_and_problems(tmp_path: Path) -> None:
    results = convert_math(str(_jsonl(tmp_path / "m.jsonl", MATH_ROWS)), tmp_path / "m")
    report, problem = inspect_file(results[0].path, rows=2)
    assert problem is None
    assert f"rows: {results[0].rows}" in report
    assert "reward_model: struct<style: string, ground_truth: string>" in report
    assert f"  {DATA_SOURCE}: {results[0].rows}" in report and report.count("--- row ") == 2
    assert "  user: Compute $" in report and "ground_truth: '\\\\frac{" in report
    assert "veRL prompt schema: OK" in report

    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(results[1].path), "--rows", "1"])
    assert res.exit_code == 0 and "--- row 0 ---" in res.output and "--- row 1 ---" not in res.output
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"text": ["hello"], "n": [1]}), plain)
    res = runner.invoke(app, ["inspect", str(plain)])
    assert res.exit_code == 0 and "text: 'hello'" in res.output
    assert "missing columns: data_source, prompt, reward_model" in res.output
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"data_source": ["x"], "prompt": ["hi"], "reward_model": [{"ground_truth": None}]}), bad)
    res = runner.invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 2 and "user: hi" in res.stdout and "INVALID" in res.stdout
    assert "bad.parquet: row 0, column 'reward_model.ground_truth' is null" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "{tmp}/missing.parquet"], "file not found: {tmp}/missing.parquet"),
        (["inspect", "{tmp}/m.jsonl"], "m.jsonl: not a readable parquet file"),
        (["math", "--source", "{tmp}/q.jsonl", "--out", "{tmp}/o"], "no column 'problem'; columns: question"),
        (["math", "--source", "{tmp}/m.jsonl", "--out", "{tmp}/o", "--test-fraction", "1.5"], "--test-fraction 1.5"),
        (["custom", "--source", "{tmp}/m.jsonl", "--out", "{tmp}/o", "--prompt-column", "problem",
          "--answer-column", "answer"], "no column 'answer' (--answer-column); columns: problem, solution"),
        (["custom", "--source", "{tmp}/empty.csv", "--out", "{tmp}/o", "--prompt-column", "q",
          "--answer-column", "a"], "empty.csv: the file has no rows"),
        (["math", "--source", "{tmp}/m.jsonl", "--out", "{tmp}/o", "--max-prompt-tokens", "9"], "needs --tokenizer"),
        (["gsm8k", "--source", "{tmp}/m.jsonl", "--out", "{tmp}/o", "--tokenizer", "{tmp}"], "only used with"),
        (["arith", "--out", "{tmp}/o", "--max-prompt-tokens", "9", "--tokenizer", "{tmp}/none"], "not a directory"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    _jsonl(tmp_path / "m.jsonl", MATH_ROWS[:4])
    _jsonl(tmp_path / "q.jsonl", [{"question": "x"}])
    (tmp_path / "empty.csv").write_text("q,a\n")
    res = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert message.format(tmp=tmp_path) in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_arith_sft_and_preference_files(tmp_path):
    import pyarrow.parquet as pq

    from cli.data.arith import write_arith_supervised
    from reward.functions import get_reward_fn

    score = get_reward_fn("arith")
    sft_train, _ = write_arith_supervised(tmp_path / "sft", "sft", n_train=20, n_test=5, min_value=0,
                                          max_value=9, ops="+", seed=0)
    rows = pq.read_table(sft_train).to_pylist()
    assert len(rows) == 20 and {"prompt", "response"} <= set(rows[0])
    assert all(score("arith", r["response"], r["ground_truth"], {}) == 1.0 for r in rows)
    pref_train, pref_test = write_arith_supervised(tmp_path / "pref", "preference", n_train=20, n_test=5,
                                                   min_value=0, max_value=9, ops="+", seed=0)
    rows = pq.read_table(pref_train).to_pylist()
    assert all(score("arith", r["chosen"], r["ground_truth"], {}) == 1.0 for r in rows)
    assert all(score("arith", r["rejected"], r["ground_truth"], {}) < 1.0 for r in rows)
    assert pq.read_table(pref_test).num_rows == 5
