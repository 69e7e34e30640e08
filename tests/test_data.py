"""Dataset writers (arith, gsm8k) produce veRL's schema; load_prompts validates it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from asyncrl.data.dataset import PromptRow, load_prompts
from asyncrl.data.format import DataError
from cli.data.arith import write_arith
from cli.data.gsm8k import INSTRUCTION, convert_gsm8k
from reward.functions import arith as arith_reward

GSM8K_ROWS = [
    {"question": f"Q{i}: Tom has {i} apples and buys 1,000 more. How many?",
     "answer": f"He has {i}+1000 = <<{i}+1000={i + 1000}>>{i + 1000}.\n#### {i + 1000:,}"}
    for i in range(20)
]


def _questions(rows: list[PromptRow]) -> set[str]:
    return {r.messages[-1]["content"] for r in rows}


def test_arith_writes_loadable_deterministic_disjoint_splits(tmp_path: Path) -> None:
    train, test = write_arith(tmp_path / "a", n_train=50, n_test=20, max_value=30, ops="+-", seed=3)
    rows, test_rows = load_prompts(train), load_prompts(test)
    assert (len(rows), len(test_rows)) == (50, 20)
    assert not _questions(rows) & _questions(test_rows)
    first = rows[0]
    assert first.data_source == "arith" and first.messages[0]["role"] == "user"
    assert "####" in first.messages[0]["content"]
    extra = first.extra_info
    assert extra["split"] == "train" and extra["index"] == 0 and first.prompt_id == 0
    expected = extra["a"] + extra["b"] if extra["op"] == "+" else extra["a"] - extra["b"]
    assert first.ground_truth == str(expected)
    assert f"What is {extra['a']} {extra['op']} {extra['b']}?" in first.messages[0]["content"]
    assert arith_reward("arith", f"#### {expected}", first.ground_truth, {}) == 1.0
    again, _ = write_arith(tmp_path / "b", n_train=50, n_test=20, max_value=30, ops="+-", seed=3)
    assert [r.messages for r in load_prompts(again)] == [r.messages for r in rows]
    other, _ = write_arith(tmp_path / "c", n_train=50, n_test=20, max_value=30, ops="+-", seed=4)
    assert [r.messages for r in load_prompts(other)] != [r.messages for r in rows]
    schema = pq.read_schema(train)
    assert schema.names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def test_arith_small_space_and_system_prompt(tmp_path: Path) -> None:
    # 3 x 3 = 9 problems: the test split takes 4, training repeats the other 5.
    train, test = write_arith(tmp_path, n_train=12, n_test=4, max_value=2, system_prompt="Be brief.")
    rows, test_rows = load_prompts(train), load_prompts(test)
    assert len(rows) == 12 and len(test_rows) == 4
    assert len(_questions(rows)) == 5 and not _questions(rows) & _questions(test_rows)
    assert rows[0].messages[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValueError, match="ops"):
        write_arith(tmp_path, ops="+/")
    with pytest.raises(ValueError, match="template"):
        write_arith(tmp_path, template="What is {x}?")


def test_gsm8k_from_jsonl_matches_verl_preprocessing(tmp_path: Path) -> None:
    src = tmp_path / "gsm8k.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    train, test = convert_gsm8k(str(src), tmp_path / "out", test_fraction=0.25, seed=1)
    rows, test_rows = load_prompts(train), load_prompts(test)
    assert (len(rows), len(test_rows)) == (15, 5)
    assert not _questions(rows) & _questions(test_rows)
    row = rows[0]
    question = row.extra_info["question"]
    assert row.data_source == "openai/gsm8k"
    assert row.messages == [{"role": "user", "content": question + " " + INSTRUCTION}]
    assert INSTRUCTION == 'Let\'s think step by step and output the final answer after "####".'
    assert row.ground_truth == str(int(question.split(":")[0][1:]) + 1000)  # commas removed
    assert row.extra_info["answer"].endswith("#### " + f"{int(row.ground_truth):,}")
    assert pq.read_table(train).column("ability").to_pylist()[0] == "math"
    limited, _ = convert_gsm8k(str(src), tmp_path / "lim", limit=3)
    assert len(load_prompts(limited)) == 3


def test_gsm8k_from_directory_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "raw" / "main"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GSM8K_ROWS[:12]), folder / "train-00000-of-00001.parquet")
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS[12:]))
    train, test = convert_gsm8k(str(tmp_path / "raw"), tmp_path / "out")
    assert len(load_prompts(train)) == 12 and len(load_prompts(test)) == 8
    assert load_prompts(test)[0].extra_info["split"] == "test"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n" + json.dumps(GSM8K_ROWS[0]) + "\n")
    with pytest.raises(DataError, match="'answer'"):
        convert_gsm8k(str(bad), tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        convert_gsm8k(str(tmp_path / "missing.jsonl"), tmp_path / "o3")
    import huggingface_hub.constants as hub  # offline, an empty cache: the hub id cannot resolve

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataError, match="openai/gsm8k.*hub"):
        convert_gsm8k("openai/gsm8k", tmp_path / "o4")


def test_load_prompts_accepts_verl_gsm8k_parquet(tmp_path: Path) -> None:
    # Exactly what veRL's examples/data_preprocess/gsm8k.py writes (datasets -> to_parquet).
    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"content": "Natalia sold 48 clips. " + INSTRUCTION, "role": "user"}],
            "ability": "math",
            "reward_model": {"ground_truth": str(72 + i), "style": "rule"},
            "extra_info": {"answer": "... #### 72", "index": 10 + i, "question": "Natalia sold 48 clips.",
                           "split": "train"},
        }
        for i in range(3)
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    loaded = load_prompts(path)
    assert [r.prompt_id for r in loaded] == [10, 11, 12] and [r.index for r in loaded] == [0, 1, 2]
    assert loaded[0].messages == [{"role": "user", "content": rows[0]["prompt"][0]["content"]}]
    assert loaded[0].ground_truth == "72" and loaded[0].data_source == "openai/gsm8k"
    assert loaded[0].extra_info["question"] == "Natalia sold 48 clips."


def test_load_prompts_leniencies(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    table = pa.table({
        "data_source": ["arith", "arith"],
        "prompt": ["What is 1 + 1?", "What is 2 + 2?"],
        "reward_model": [{"ground_truth": 2.0}, {"ground_truth": 4.5}],
        "extra_info": [{"index": 7}, {"index": 7}],  # duplicate index: fall back to row numbers
    })
    pq.write_table(table, path)
    loaded = load_prompts(path)
    assert loaded[0].messages == [{"role": "user", "content": "What is 1 + 1?"}]
    assert [r.ground_truth for r in loaded] == ["2", "4.5"]
    assert [r.prompt_id for r in loaded] == [0, 1]


def test_load_prompts_errors_name_file_and_column(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(DataError, match="not found.*nope.parquet"):
        load_prompts(missing)
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(DataError, match="text.parquet.*parquet"):
        load_prompts(text)
    base = {"data_source": ["arith"], "prompt": ["hi"], "reward_model": [{"ground_truth": "1"}]}
    for column in ("data_source", "prompt", "reward_model"):
        path = tmp_path / f"no_{column}.parquet"
        pq.write_table(pa.table({k: v for k, v in base.items() if k != column}), path)
        with pytest.raises(DataError, match=f"no_{column}.parquet.*'{column}'"):
            load_prompts(path)
    path = tmp_path / "no_gt.parquet"
    pq.write_table(pa.table({**base, "reward_model": [{"style": "rule"}]}), path)
    with pytest.raises(DataError, match="no_gt.parquet.*'reward_model'.*ground_truth"):
        load_prompts(path)
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table(base).slice(0, 0), path)
    with pytest.raises(DataError, match="empty.parquet.*no rows"):
        load_prompts(path)
    path = tmp_path / "null_gt.parquet"
    pq.write_table(pa.table({**base, "reward_model": [{"ground_truth": None}]}), path)
    with pytest.raises(DataError, match="null_gt.parquet: row 0.*ground_truth"):
        load_prompts(path)
    path = tmp_path / "bad_msg.parquet"
    pq.write_table(pa.table({**base, "prompt": [[{"role": "user"}]]}), path)
    with pytest.raises(DataError, match="bad_msg.parquet: row 0, column 'prompt'"):
        load_prompts(path)


def test_data_cli_writes_and_reports_errors(tmp_path: Path) -> None:
    from cli.data.commands import app

    runner = CliRunner()
    result = runner.invoke(app, ["arith", "--out", str(tmp_path / "a"), "--n-train", "10", "--n-test", "5"])
    assert result.exit_code == 0, result.output
    assert "train.parquet (10 rows)" in result.output and "test.parquet (5 rows)" in result.output
    result = runner.invoke(app, ["gsm8k", "--source", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "missing.jsonl" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["arith", "--out", str(tmp_path / "b"), "--ops", "%"])
    assert result.exit_code == 2 and "ops" in result.output
