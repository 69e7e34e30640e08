"""Products of 3–4 digit numbers for the ``arith_tools`` environment, and SFT warm-start traces.

RL rows are in veRL's prompt schema (:mod:`asyncrl.data.format`) with ``data_source``
``arith_tools`` and the product as ground truth; the train and test splits never share a pair.
SFT rows (``--sft-out``) are chat transcripts in the ``messages`` format of ``asyncrl sft``
(``data.format = "messages"``): the system prompt holds the tool instructions exactly as
:func:`envs.render.render_prompt` writes them for a template that ignores ``tools=``, the
assistant calls the calculator in the parser's format, a ``tool`` message answers, and the
assistant ends with ``#### n``. The SFT loss covers the two assistant turns only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from asyncrl.data.format import make_row, write_rows
from envs.base import ToolCall
from envs.parsers import get_parser
from envs.render import with_tool_instructions
from envs.tools import calculator_tool

DATA_SOURCE = "arith_tools"
TEMPLATE = "What is {a} * {b}? You can use the calculator tool. Put the final answer after ####."


def draw_pairs(*, n_train: int, n_test: int, seed: int, min_digits: int = 3,
               max_digits: int = 4) -> dict[str, list[tuple[int, int]]]:
    """Distinct ``(a, b)`` pairs, each operand with ``min_digits``..``max_digits`` digits; test first."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train={n_train} and n_test={n_test} must both be >= 1")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits ({min_digits}) <= max_digits ({max_digits})")
    lo, hi = 10 ** (min_digits - 1), 10 ** max_digits - 1
    if (hi - lo + 1) ** 2 < 2 * (n_train + n_test):
        raise ValueError(f"{n_train + n_test} distinct pairs do not fit operands of {min_digits}-{max_digits} digits")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < n_train + n_test:
        seen.add((rng.randint(lo, hi), rng.randint(lo, hi)))
    pairs = sorted(seen)
    rng.shuffle(pairs)
    return {"train": pairs[n_test:], "test": pairs[:n_test]}


def write_arith_tools(out: Path, *, n_train: int = 2000, n_test: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """``out/train.parquet`` and ``out/test.parquet`` in the prompt schema; returns their paths."""
    paths = []
    for split, pairs in draw_pairs(n_train=n_train, n_test=n_test, seed=seed).items():
        rows = [make_row(data_source=DATA_SOURCE, messages=[{"role": "user", "content": TEMPLATE.format(a=a, b=b)}],
                         ability="math", ground_truth=str(a * b), split=split, index=i, a=a, b=b)
                for i, (a, b) in enumerate(pairs)]
        paths.append(write_rows(Path(out) / f"{split}.parquet", rows))
    return paths[0], paths[1]


def trace(a: int, b: int, parser_name: str = "hermes") -> list[dict[str, Any]]:
    """One warm-start transcript: the prompt, a calculator call, its result, the answer."""
    tools = [calculator_tool()]
    call = ToolCall(name="calculator", arguments={"expression": f"{a} * {b}"})
    prompt = with_tool_instructions([{"role": "user", "content": TEMPLATE.format(a=a, b=b)}], tools, parser_name)
    return prompt + [
        {"role": "assistant", "content": get_parser(parser_name).format_call(call)},
        {"role": "tool", "content": tools[0].fn(**call.arguments)},
        {"role": "assistant", "content": f"{a} * {b} = {a * b}. #### {a * b}"},
    ]


def write_arith_tools_sft(out: Path, *, n_train: int = 2000, n_test: int = 200, seed: int = 0,
                          parser_name: str = "hermes") -> tuple[Path, Path]:
    """SFT ``messages`` parquet files for the same pairs as :func:`write_arith_tools`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, pairs in draw_pairs(n_train=n_train, n_test=n_test, seed=seed).items():
        rows = [{"messages": trace(a, b, parser_name), "data_source": DATA_SOURCE, "ground_truth": str(a * b)}
                for a, b in pairs]
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths[0], paths[1]
