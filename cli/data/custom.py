"""Read tabular sources (jsonl/json/csv/tsv/parquet) and convert any prompt/answer table to veRL's schema.

:func:`load_splits` turns a source into ``{"train": rows, "test": rows}``:

* a file: shuffled with ``seed``, ``test_fraction`` of it becomes the test split;
* a directory with one ``train*`` and one ``test*`` file of those types (searched recursively);
* otherwise a hub id: its data files, fetched into the hub cache or read from it offline
  (:mod:`asyncrl.hub`; a dataset with only one file is split like a file).

:func:`convert_custom` builds one user message per row from ``prompt_column`` (a string,
or already a list of ``{role, content}`` messages), optionally through a template, and
takes the ground truth from ``answer_column``.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from asyncrl.data.format import DataError, make_row
from cli.data.filter import LengthFilter, SplitResult, write_splits

SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")
DEFAULT_DATA_SOURCE = "custom"
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_records(path: Path) -> list[dict[str, Any]]:
    """All rows of one file as dicts; raises :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"source file not found: {path}")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
        elif path.suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
        else:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json" and text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not valid {path.suffix[1:]} ({exc})") from exc
    except Exception as exc:  # pyarrow raises several types for unreadable parquet
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: the file has no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is a {type(row).__name__}, expected an object with named columns")
    return rows


def _split_rows(rows: list[dict[str, Any]], seed: int, test_fraction: float) -> dict[str, list[dict[str, Any]]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_test = round(len(rows) * test_fraction)
    if len(rows) >= 2:
        n_test = min(max(n_test, 1), len(rows) - 1)  # both splits non-empty
    return {"train": rows[n_test:], "test": rows[:n_test]}


def _find_split(folder: Path, split: str) -> Path:
    found = sorted(p for p in folder.rglob(f"{split}*") if p.suffix in SUFFIXES and p.is_file())
    if len(found) != 1:
        what = "none" if not found else f"{len(found)} ({', '.join(map(str, found))})"
        raise DataError(f"{folder}: expected one {split}* file ({'/'.join(SUFFIXES)}), found {what}")
    return found[0]


def _load_hub(source: str, seed: int, test_fraction: float) -> dict[str, list[dict[str, Any]]]:
    """A hub dataset's data files, fetched or from the hub cache: its train/test files, or its one
    file split like a local one."""
    from asyncrl.hub import fetch_dataset

    folder = fetch_dataset(source, "--source")
    files = sorted(p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if any(p.name.startswith("train") for p in files) and any(p.name.startswith("test") for p in files):
        return {split: read_records(_find_split(folder, split)) for split in ("train", "test")}
    if len(files) != 1:
        raise DataError(f"--source {source}: the hub copy in {folder} has {len(files)} data files and no "
                        f"train*/test* pair; download it and pass the file to use")
    return _split_rows(read_records(files[0]), seed, test_fraction)


def load_splits(source: str | Path, seed: int = 0, test_fraction: float = 0.1) -> tuple[dict[str, list], str]:
    """``({"train": rows, "test": rows}, origin)`` from a file, a directory or a hub id."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"--test-fraction {test_fraction} must be between 0 and 1 (exclusive)")
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return {split: read_records(_find_split(path, split)) for split in ("train", "test")}, str(path)
    if path.is_file() or path.is_absolute() or text.startswith(".") or path.suffix in SUFFIXES:
        return _split_rows(read_records(path), seed, test_fraction), str(path)
    return _load_hub(text, seed, test_fraction), text


def require_column(rows: list[dict[str, Any]], column: str, origin: str, option: str = "") -> None:
    """Raise naming ``column`` and the available ones when the first row lacks it."""
    if column not in rows[0]:
        flag = f" ({option})" if option else ""
        raise DataError(f"{origin}: no column {column!r}{flag}; columns: {', '.join(map(str, rows[0]))}")


def scalar_text(value: Any, where: str) -> str:
    """A ground truth as text (integral floats lose their ``.0``); raises for null or non-scalars."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float, bool)) and str(value).strip():
        return str(value)
    raise DataError(f"{where}: expected a non-empty string or number, got {value!r}")


def render(template: str | None, prompt: str, row: dict[str, Any]) -> str:
    """``template`` with ``{prompt}`` and ``{COLUMN}`` filled in; other braces (``\\boxed{}``) stay."""
    if template is None:
        return prompt
    values = {**{str(k): v for k, v in row.items()}, "prompt": prompt}
    return _PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def _messages(value: Any, row: dict[str, Any], template: str | None, system: str | None, where: str) -> list:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty")
        messages = [{"role": "user", "content": render(template, value, row)}]
    elif isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
        if template is not None and messages[-1]["role"] == "user":
            messages[-1]["content"] = render(template, messages[-1]["content"], row)
    else:
        raise DataError(f"{where}: expected a string or a list of {{role, content}} messages, got {value!r:.120}")
    if system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def convert_custom(
    source: str | Path,
    out: Path,
    *,
    prompt_column: str,
    answer_column: str,
    data_source: str = DEFAULT_DATA_SOURCE,
    template: str | None = None,
    system_prompt: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    length_filter: LengthFilter | None = None,
) -> list[SplitResult]:
    """Write ``out/train.parquet`` and ``out/test.parquet`` from a table with prompt and answer columns."""
    if template is not None and "{prompt}" not in template:
        raise DataError(f"--template {template!r} must contain {{prompt}}")
    if not data_source:
        raise DataError("--data-source must not be empty")
    splits, origin = load_splits(source, seed, test_fraction)
    converted = {}
    for split, rows in splits.items():
        if not rows:
            raise DataError(f"{origin}: the {split} split is empty")
        require_column(rows, prompt_column, origin, "--prompt-column")
        require_column(rows, answer_column, origin, "--answer-column")
        out_rows = []
        for index, row in enumerate(rows):
            where = f"{origin}: {split} row {index}"
            if prompt_column not in row or answer_column not in row:
                raise DataError(f"{where}: missing column {prompt_column!r} or {answer_column!r}")
            messages = _messages(row[prompt_column], row, template, system_prompt, f"{where}, column {prompt_column!r}")
            truth = scalar_text(row[answer_column], f"{where}, column {answer_column!r}")
            out_rows.append(
                make_row(data_source=data_source, messages=messages, ability="custom", ground_truth=truth,
                         split=split, index=index)
            )
        converted[split] = out_rows
    return write_splits(converted, out, origin, limit=limit, length_filter=length_filter)
