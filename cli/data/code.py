"""Programming problems for the ``code`` environment: from local jsonl, or a small synthetic set.

Each source row has ``problem`` (the statement) and ``tests``: ``{"inputs": [...], "outputs": [...]}``
(stdin and expected stdout per case, the layout of APPS/TACO-style public code datasets), given as
an object or as a JSON string of one; a list of ``{"input", "output"}`` objects is accepted too.
The row's ground truth is the tests as a JSON string ``{"inputs": [...], "outputs": [...]}``, which
:func:`sandbox.parse_tests` reads and the ``code`` environment scores with :func:`sandbox.run_tests`.
``--synthetic`` writes :data:`SYNTHETIC` (easy stdin/stdout problems, for tests and configs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asyncrl.data.format import DataError, make_row
from cli.data.custom import _split_rows, load_splits, require_column, scalar_text
from cli.data.filter import LengthFilter, SplitResult, write_splits

DATA_SOURCE = "code"
TEMPLATE = ("Write a Python program that reads its input from standard input and prints the answer to standard "
            "output.\n\n{problem}\n\nYou can run code with the python tool. Give your final program in one "
            "```python code block.")

# (statement, [(stdin, expected stdout), ...])
SYNTHETIC: list[tuple[str, list[tuple[str, str]]]] = [
    ("Read two integers on one line and print their sum.",
     [("1 2\n", "3\n"), ("-5 5\n", "0\n"), ("100 23\n", "123\n")]),
    ("Read two integers on one line and print their product.",
     [("3 4\n", "12\n"), ("-2 6\n", "-12\n"), ("0 9\n", "0\n")]),
    ("Read a line of text and print it reversed.",
     [("abc\n", "cba\n"), ("racecar\n", "racecar\n"), ("ab cd\n", "dc ba\n")]),
    ("Read a line of text and print it in upper case.", [("hello\n", "HELLO\n"), ("MiXeD 1\n", "MIXED 1\n")]),
    ("Read integers separated by spaces on one line and print the largest.", [("1 5 3\n", "5\n"), ("-1 -7\n", "-1\n")]),
    ("Read an integer n and print n factorial.", [("0\n", "1\n"), ("5\n", "120\n"), ("10\n", "3628800\n")]),
    ("Read a word and print the number of vowels (a, e, i, o, u) in it.", [("banana\n", "3\n"), ("sky\n", "0\n")]),
    ("Read an integer n and print YES if it is even, otherwise NO.",
     [("4\n", "YES\n"), ("7\n", "NO\n"), ("0\n", "YES\n")]),
    ("Read an integer n and print the numbers 1 to n, one per line.", [("3\n", "1\n2\n3\n"), ("1\n", "1\n")]),
    ("Read integers separated by spaces on one line and print their sum.", [("1 2 3\n", "6\n"), ("10\n", "10\n")]),
    ("Read an integer n and print the n-th Fibonacci number (F(0)=0, F(1)=1).",
     [("0\n", "0\n"), ("1\n", "1\n"), ("10\n", "55\n")]),
    ("Read a word and print YES if it is a palindrome, otherwise NO.", [("level\n", "YES\n"), ("abc\n", "NO\n")]),
]


def normalize_tests(value: Any, where: str) -> dict[str, list[str]]:
    """``{"inputs": [...], "outputs": [...]}`` (strings, equal lengths, at least one case) from a row's tests."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: tests is a string but not valid JSON ({exc})") from None
    if isinstance(value, list) and all(isinstance(c, dict) and {"input", "output"} <= c.keys() for c in value):
        value = {"inputs": [c["input"] for c in value], "outputs": [c["output"] for c in value]}
    if not isinstance(value, dict) or not isinstance(value.get("inputs"), list) \
            or not isinstance(value.get("outputs"), list):
        raise DataError(f'{where}: tests must be {{"inputs": [...], "outputs": [...]}} or a list of '
                        f'{{"input", "output"}} objects, got {value!r:.120}')
    inputs, outputs = value["inputs"], value["outputs"]
    if not inputs or len(inputs) != len(outputs):
        raise DataError(f"{where}: tests need at least one case and as many outputs as inputs "
                        f"(got {len(inputs)} inputs, {len(outputs)} outputs)")
    if not all(isinstance(s, str) for s in inputs + outputs):
        raise DataError(f"{where}: every test input and output must be a string")
    return {"inputs": inputs, "outputs": outputs}


def _rows(records: list[dict[str, Any]], split: str, origin: str) -> list[dict[str, Any]]:
    rows = []
    for i, record in enumerate(records):
        where = f"{origin}: {split} row {i}"
        problem = scalar_text(record.get("problem"), f"{where}, column 'problem'").strip()
        tests = normalize_tests(record.get("tests"), f"{where}, column 'tests'")
        rows.append(make_row(data_source=DATA_SOURCE, messages=[{"role": "user", "content": TEMPLATE.format(
            problem=problem)}], ability="code", ground_truth=json.dumps(tests), split=split, index=i))
    return rows


def synthetic_records() -> list[dict[str, Any]]:
    """:data:`SYNTHETIC` as source rows."""
    return [{"problem": p, "tests": {"inputs": [c[0] for c in cases], "outputs": [c[1] for c in cases]}}
            for p, cases in SYNTHETIC]


def convert_code(source: str | None, out: Path, *, synthetic: bool = False, limit: int | None = None,
                 seed: int = 0, test_fraction: float = 0.25,
                 length_filter: LengthFilter | None = None) -> list[SplitResult]:
    """Write ``out/train.parquet`` and ``out/test.parquet`` from ``source`` or the synthetic set."""
    if (source is None) == (not synthetic):
        raise DataError("give exactly one of --source FILE.jsonl and --synthetic")
    if synthetic:
        splits, origin = _split_rows(synthetic_records(), seed, test_fraction), "synthetic code problems"
    else:
        splits, origin = load_splits(str(source), seed, test_fraction)
        for rows in splits.values():
            if rows:
                require_column(rows, "problem", origin)
                require_column(rows, "tests", origin)
    converted = {split: _rows(records, split, origin) for split, records in splits.items()}
    return write_splits(converted, Path(out), origin, limit=limit, length_filter=length_filter)
