"""Convert GSM8K (columns ``question``, ``answer`` ending in ``#### N``) to veRL's schema.

The output matches veRL's ``examples/data_preprocess/gsm8k.py``: data_source
``openai/gsm8k``, the question followed by veRL's instruction, ground truth = the number
after ``####`` with commas removed, and ``extra_info`` = split, index, answer, question.

Sources, tried in this order:

* a ``.parquet`` / ``.jsonl`` / ``.json`` file: shuffled with ``seed`` and split, with
  ``test_fraction`` of the rows going to the test split;
* a directory holding ``train*`` and ``test*`` files of those types (searched
  recursively, e.g. the hub layout ``main/train-00000-of-00001.parquet``);
* a hub id such as ``openai/gsm8k`` (the default): its parquet files, fetched into the hub
  cache or read from it offline (:mod:`asyncrl.hub`).

``limit`` caps the rows of each split (the first ``limit`` rows, in source order).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from asyncrl.data.format import DataError, make_row, write_rows

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
SUFFIXES = (".parquet", ".jsonl", ".json")


def extract_answer(answer: str) -> str | None:
    """The number after the first ``#### `` in a GSM8K answer, commas removed (veRL's rule)."""
    match = ANSWER_RE.search(answer)
    return None if match is None else match.group(1).replace(",", "")


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON lines ({exc})") from exc


def _find_split(folder: Path, split: str) -> Path:
    found = sorted(p for p in folder.rglob(f"{split}*") if p.suffix in SUFFIXES and p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(map(str, found))})"
        raise DataError(f"{folder}: expected one {split}* file ({'/'.join(SUFFIXES)}), found {what}")
    return found[0]


def _load_hub(source: str) -> dict[str, list[dict[str, Any]]]:
    """A hub dataset's train/test files (gsm8k: its ``main`` config), fetched or from the hub cache."""
    from asyncrl.hub import fetch_dataset

    subdir = "main" if source.rstrip("/").endswith("gsm8k") else None
    folder = fetch_dataset(source, "--source", subdir=subdir)
    return {split: _read_file(_find_split(folder, split)) for split in ("train", "test")}


def _load(source: str, seed: int, test_fraction: float) -> tuple[dict[str, list[dict[str, Any]]], str]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = {split: _find_split(path, split) for split in ("train", "test")}
        return {split: _read_file(p) for split, p in files.items()}, str(path)
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
        rows = _read_file(path)
        random.Random(seed).shuffle(rows)
        n_test = round(len(rows) * test_fraction)
        if len(rows) >= 2:
            n_test = min(max(n_test, 1), len(rows) - 1)  # both splits non-empty
        return {"train": rows[n_test:], "test": rows[:n_test]}, str(path)
    if path.is_absolute() or source.startswith(".") or path.suffix in SUFFIXES:
        raise FileNotFoundError(f"GSM8K source not found: {path}")
    return _load_hub(source), source


def _convert(rows: list[dict[str, Any]], split: str, origin: str) -> list[dict[str, Any]]:
    out = []
    for index, row in enumerate(rows):
        for column in ("question", "answer"):
            if not isinstance(row.get(column), str):
                raise DataError(f"{origin}: {split} row {index} has no string column {column!r}")
        solution = extract_answer(row["answer"])
        if solution is None:
            raise DataError(f"{origin}: {split} row {index}: column 'answer' has no '#### <number>'")
        out.append(
            make_row(
                data_source=DATA_SOURCE,
                messages=[{"role": "user", "content": row["question"] + " " + INSTRUCTION}],
                ability="math",
                ground_truth=solution,
                split=split,
                index=index,
                answer=row["answer"],
                question=row["question"],
            )
        )
    return out


def convert_gsm8k(
    source: str, out: Path, *, limit: int | None = None, seed: int = 0, test_fraction: float = 0.1
) -> tuple[Path, Path]:
    """Write ``out/train.parquet`` and ``out/test.parquet`` from a GSM8K source; returns their paths."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be between 0 and 1 (exclusive)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be >= 1")
    splits, origin = _load(str(source), seed, test_fraction)
    out = Path(out)
    paths = []
    for split in ("train", "test"):
        rows = splits[split][:limit] if limit is not None else splits[split]
        if not rows:
            raise DataError(f"{origin}: the {split} split is empty")
        paths.append(write_rows(out / f"{split}.parquet", _convert(rows, split, origin)))
    return paths[0], paths[1]
