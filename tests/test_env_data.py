"""``asyncrl data arith-tools`` and ``asyncrl data code``: files written in the prompt schema (read
back by load_prompts), SFT transcripts the SFT loader accepts and masks per assistant turn, and
errors that name the file, row and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from asyncrl.data.dataset import load_prompts
from asyncrl.data.format import DataError
from asyncrl.data.supervised import load_sft
from asyncrl.train_config import SFTData
from cli.data.code import SYNTHETIC, convert_code
from cli.data.commands import app
from envs.builtin import arith_tools_score
from envs.parsers import get_parser
from sandbox import parse_tests


def test_arith_tools_cli_writes_disjoint_products_and_matching_sft_traces(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["arith-tools", "--out", str(tmp_path / "rl"), "--sft-out", str(tmp_path / "sft"),
                                      "--train", "40", "--test", "10", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.count("wrote ") == 4
    train, test = (load_prompts(tmp_path / "rl" / f"{s}.parquet") for s in ("train", "test"))
    assert len(train) == 40 and len(test) == 10
    pairs = {split: {(r.extra_info["a"], r.extra_info["b"]) for r in rows} for split, rows in
             (("train", train), ("test", test))}
    assert not pairs["train"] & pairs["test"] and len(pairs["train"]) == 40
    for row in train:
        a, b = row.extra_info["a"], row.extra_info["b"]
        assert 100 <= a <= 9999 and 100 <= b <= 9999 and row.ground_truth == str(a * b)
        assert row.data_source == "arith_tools" and f"What is {a} * {b}?" in row.messages[-1]["content"]
    chats = load_sft(tmp_path / "sft" / "train.parquet", SFTData(train=tmp_path / "sft" / "train.parquet",
                                                                 format="messages"))
    assert len(chats) == 40
    chat, row = chats[0], pq.read_table(tmp_path / "sft" / "train.parquet").to_pylist()[0]
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool", "assistant"]
    calls, errors = get_parser("hermes").parse(chat[2]["content"])
    assert errors == [] and calls[0].name == "calculator" and chat[3]["content"] == row["ground_truth"]
    assert arith_tools_score(chat[4]["content"], row["ground_truth"]) == 1.0
    again = CliRunner().invoke(app, ["arith-tools", "--out", str(tmp_path / "rl2"), "--train", "40", "--test", "10",
                                     "--seed", "3"])
    assert again.exit_code == 0 and pq.read_table(tmp_path / "rl2" / "train.parquet").equals(
        pq.read_table(tmp_path / "rl" / "train.parquet"))


def test_sft_masks_only_assistant_turns_of_a_tool_transcript(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from learner.supervised.sft import encode_chat

    CliRunner().invoke(app, ["arith-tools", "--sft-out", str(tmp_path), "--train", "2", "--test", "1"])
    chat = load_sft(tmp_path / "train.parquet", SFTData(train=tmp_path / "train.parquet", format="messages"))[0]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, mask = encode_chat(tok, chat)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == f"{chat[2]['content']}<|im_end|>\n{chat[4]['content']}<|im_end|>\n"


def test_arith_tools_cli_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["arith-tools", "--train", "3"])
    assert result.exit_code == 2 and "give --out (RL prompts), --sft-out" in result.output
    result = CliRunner().invoke(app, ["arith-tools", "--sft-out", str(tmp_path), "--parser", "xml"])
    assert result.exit_code == 2 and "unknown tool-call parser 'xml'" in result.output


def test_code_synthetic_rows_carry_tests_the_sandbox_reads(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["code", "--synthetic", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = load_prompts(tmp_path / "train.parquet") + load_prompts(tmp_path / "test.parquet")
    assert len(rows) == len(SYNTHETIC) and {r.data_source for r in rows} == {"code"}
    for row in rows:
        tests = parse_tests(row.ground_truth)
        assert tests and "```python" in row.messages[0]["content"]


def test_code_from_jsonl_and_errors_name_row_and_column(tmp_path: Path) -> None:
    source = tmp_path / "problems.jsonl"
    rows: list[dict[str, Any]] = [{"problem": f"Print {i}.", "tests": {"inputs": [""], "outputs": [f"{i}\n"]}}
                                  for i in range(6)]
    rows[1]["tests"] = json.dumps(rows[1]["tests"])  # a JSON string, as some datasets store it
    rows[2]["tests"] = [{"input": "", "output": "2\n"}]
    source.write_text("\n".join(json.dumps(r) for r in rows))
    results = convert_code(str(source), tmp_path / "out", test_fraction=0.5, seed=1)
    assert [r.rows for r in results] == [3, 3]
    written = load_prompts(tmp_path / "out" / "train.parquet") + load_prompts(tmp_path / "out" / "test.parquet")
    assert sorted(json.loads(r.ground_truth)["outputs"][0] for r in written) == [f"{i}\n" for i in range(6)]
    source.write_text(json.dumps({"problem": "x", "tests": {"inputs": ["1"], "outputs": []}}) + "\n"
                      + json.dumps({"problem": "y", "tests": {"inputs": ["1"], "outputs": ["1"]}}))
    with pytest.raises(DataError, match=r"problems.jsonl: (train|test) row 0, column 'tests': .*1 inputs, 0 outputs"):
        convert_code(str(source), tmp_path / "bad")
    source.write_text(json.dumps({"question": "x", "tests": {}}) + "\n" + json.dumps({"question": "y", "tests": {}}))
    with pytest.raises(DataError, match="no column 'problem'; columns: question, tests"):
        convert_code(str(source), tmp_path / "bad")
    result = CliRunner().invoke(app, ["code", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "exactly one of --source FILE.jsonl and --synthetic" in result.output
