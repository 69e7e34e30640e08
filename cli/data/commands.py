"""``asyncrl data``: write prompt datasets in veRL's parquet schema, and inspect parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from collections.abc import Callable

    from cli.data.filter import LengthFilter, SplitResult

app = typer.Typer(help="Prepare datasets (veRL parquet schema).", no_args_is_help=True, add_completion=False)

SOURCE_HELP = "Local parquet/jsonl/json file, a directory with train*/test* files, or a hub id."
OUT_HELP = "Directory for train.parquet and test.parquet."
LIMIT_HELP = "Keep at most this many rows per split."
SEED_HELP = "Shuffle seed when one file is split into train/test."
FRACTION_HELP = "Test share when one file is split."
MAX_TOKENS_HELP = "Drop prompts longer than this many tokens (chat template applied); needs --tokenizer."
TOKENIZER_HELP = "Local Hugging Face tokenizer (or model) directory for --max-prompt-tokens."


def _fail(command: str, exc: Exception) -> None:
    typer.echo(f"asyncrl data {command}: {exc}", err=True)
    raise typer.Exit(2)


def _report(paths: tuple[Path, Path], length_filter: LengthFilter | None = None) -> None:
    """Filter files already written (arith, gsm8k) when asked, then print one line per file."""
    import pyarrow.parquet as pq

    from cli.data.filter import filter_parquet

    for path in paths:
        note = ""
        if length_filter is not None:
            _, dropped = filter_parquet(path, length_filter)
            note = f"; dropped {dropped} prompts over {length_filter.max_tokens} tokens"
        typer.echo(f"wrote {path} ({pq.read_metadata(path).num_rows} rows{note})")


def _reward_hint(data_source: str) -> None:
    from reward.functions import UnknownRewardError, default_reward_name

    try:
        typer.echo(f"data_source {data_source!r} selects the {default_reward_name(data_source)!r} reward")
    except UnknownRewardError:
        typer.echo(f"note: data_source {data_source!r} has no default reward function; set reward.function "
                   f"(a registered name, 'module:function' or 'path/to/file.py:function') in the run config")


@app.command()
def arith(
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    n_train: int = typer.Option(2000, help="Training prompts."),
    n_test: int = typer.Option(200, help="Test prompts (disjoint from training where the space allows)."),
    min_value: int = typer.Option(0, help="Smallest operand."),
    max_value: int = typer.Option(20, help="Largest operand."),
    ops: str = typer.Option("+", help="Operations to draw from, e.g. '+-*'."),
    seed: int = typer.Option(0, help="Seed of the problem draw."),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP + " Applied after the draw."),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
    kind: str = typer.Option("rl", "--kind", help="rl: prompts + ground truth (veRL schema); sft: prompt + "
                             "worked response; preference: prompt + chosen (right) + rejected (wrong answer)."),
) -> None:
    """Synthetic arithmetic ("What is 7 + 5?"), answered after '####'."""
    from cli.data.arith import write_arith, write_arith_supervised
    from cli.data.filter import make_filter

    try:
        draw: dict[str, Any] = dict(n_train=n_train, n_test=n_test, min_value=min_value, max_value=max_value,
                                    ops=ops, seed=seed)
        if kind != "rl":
            if max_prompt_tokens is not None:
                raise ValueError("--max-prompt-tokens applies to --kind rl only")
            for p in write_arith_supervised(out, kind, **draw):
                typer.echo(f"wrote {p}")
            return
        length_filter = make_filter(max_prompt_tokens, tokenizer)
        paths = write_arith(out, **draw)
        _report(paths, length_filter)
    except (ValueError, OSError) as exc:
        _fail("arith", exc)


@app.command("arith-tools")
def arith_tools(
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP + " RL prompts for the arith_tools environment."),
    sft_out: Path | None = typer.Option(None, "--sft-out", help="Directory for SFT warm-start transcripts "
                                        "(messages format: calculator call, tool result, '#### n')."),
    n_train: int = typer.Option(2000, "--train", help="Training problems."),
    n_test: int = typer.Option(200, "--test", help="Test problems (never a training pair)."),
    seed: int = typer.Option(0, help="Seed of the draw; --out and --sft-out with one seed hold the same pairs."),
    parser: str = typer.Option("hermes", help="Tool-call format of the SFT transcripts (hermes, llama3)."),
) -> None:
    """Products of 3-4 digit numbers, where the calculator tool genuinely helps."""
    from cli.data.arith_tools import write_arith_tools, write_arith_tools_sft

    try:
        if out is None and sft_out is None:
            raise ValueError("give --out (RL prompts), --sft-out (SFT transcripts) or both")
        if out is not None:
            _report(write_arith_tools(out, n_train=n_train, n_test=n_test, seed=seed))
        if sft_out is not None:
            _report(write_arith_tools_sft(sft_out, n_train=n_train, n_test=n_test, seed=seed, parser_name=parser))
    except (ValueError, OSError) as exc:
        _fail("arith-tools", exc)


@app.command()
def code(
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    source: str | None = typer.Option(None, "--source", help=SOURCE_HELP + " Rows: problem, tests "
                                      "({inputs: [...], outputs: [...]})."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Write the small built-in set of easy problems."),
    limit: int | None = typer.Option(None, help=LIMIT_HELP),
    seed: int = typer.Option(0, help=SEED_HELP),
    test_fraction: float = typer.Option(0.25, help=FRACTION_HELP),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
) -> None:
    """Programming problems with stdin/stdout test cases for the code environment."""
    from cli.data.code import convert_code

    _convert_and_describe("code", max_prompt_tokens, tokenizer, lambda length_filter: convert_code(
        source, out, synthetic=synthetic, limit=limit, seed=seed, test_fraction=test_fraction,
        length_filter=length_filter))


def _convert_and_describe(command: str, max_prompt_tokens: int | None, tokenizer: Path | None,
                          convert: Callable[[LengthFilter | None], list[SplitResult]]) -> None:
    """Run a converter with the length filter the options ask for; print one line per split written."""
    from cli.data.filter import make_filter

    try:
        length_filter = make_filter(max_prompt_tokens, tokenizer)
        results = convert(length_filter)
    except (ValueError, OSError) as exc:
        _fail(command, exc)
    for result in results:
        typer.echo(result.describe(length_filter))


@app.command()
def gsm8k(
    source: str = typer.Option("openai/gsm8k", "--source", help=SOURCE_HELP + " Default: the hub's openai/gsm8k."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    limit: int | None = typer.Option(None, help=LIMIT_HELP),
    seed: int = typer.Option(0, help=SEED_HELP),
    test_fraction: float = typer.Option(0.1, help=FRACTION_HELP),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP + " Applied after --limit."),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
) -> None:
    """Convert GSM8K (question/answer with '#### N') to veRL's schema, as veRL's preprocessor does."""
    from cli.data.filter import make_filter
    from cli.data.gsm8k import convert_gsm8k

    try:
        length_filter = make_filter(max_prompt_tokens, tokenizer)
        paths = convert_gsm8k(source, out, limit=limit, seed=seed, test_fraction=test_fraction)
        _report(paths, length_filter)
    except (ValueError, OSError) as exc:
        _fail("gsm8k", exc)


@app.command("math")
def math_(
    source: str = typer.Option(..., "--source", help=SOURCE_HELP + " CSV/TSV files work too."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    data_source: str = typer.Option("DigitalLearningGmbH/MATH-lighteval", help="data_source of every row."),
    limit: int | None = typer.Option(None, help=LIMIT_HELP + " Applied after --max-prompt-tokens."),
    seed: int = typer.Option(0, help=SEED_HELP),
    test_fraction: float = typer.Option(0.1, help=FRACTION_HELP),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
) -> None:
    """Convert MATH / MATH-500 rows (problem, solution with \\boxed{}, optional answer) as veRL does."""
    from cli.data.filter import make_filter
    from cli.data.math import convert_math

    try:
        length_filter = make_filter(max_prompt_tokens, tokenizer)
        results = convert_math(source, out, data_source=data_source, limit=limit, seed=seed,
                               test_fraction=test_fraction, length_filter=length_filter)
    except (ValueError, OSError) as exc:
        _fail("math", exc)
    for result in results:
        typer.echo(result.describe(length_filter))
    _reward_hint(data_source)


def _eval_set(name: str, source: Path, out: Path, data_source: str | None, limit: int | None,
              max_prompt_tokens: int | None, tokenizer: Path | None) -> None:
    from cli.data.eval_sets import SETS, convert_eval_set
    from cli.data.filter import make_filter

    try:
        length_filter = make_filter(max_prompt_tokens, tokenizer)
        results = convert_eval_set(name, source, out, data_source=data_source, limit=limit,
                                   length_filter=length_filter)
    except (ValueError, OSError) as exc:
        _fail(name, exc)
    for result in results:
        typer.echo(result.describe(length_filter))
    _reward_hint(data_source or SETS[name][0])


EVAL_SOURCE_HELP = "Local parquet/jsonl/json/csv file with 'problem' and 'answer' columns (or a folder holding one)."
EVAL_OUT_HELP = "Directory for test.parquet (an evaluation set: no train split)."


@app.command()
def math500(
    source: Path = typer.Option(..., "--source", help=EVAL_SOURCE_HELP + " Layout of HuggingFaceH4/MATH-500."),
    out: Path = typer.Option(..., "--out", help=EVAL_OUT_HELP),
    data_source: str | None = typer.Option(None, help="data_source of every row (default HuggingFaceH4/MATH-500)."),
    limit: int | None = typer.Option(None, help="Keep the first N rows. Applied after --max-prompt-tokens."),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
) -> None:
    """MATH-500 (problem, answer; subject, level, unique_id kept) as a test set graded by the math reward."""
    _eval_set("math500", source, out, data_source, limit, max_prompt_tokens, tokenizer)


@app.command()
def aime(
    source: Path = typer.Option(..., "--source", help=EVAL_SOURCE_HELP + " Layout of AI-MO/aimo-validation-aime."),
    out: Path = typer.Option(..., "--out", help=EVAL_OUT_HELP),
    data_source: str | None = typer.Option(None, help="data_source of every row (default aime: the math reward)."),
    limit: int | None = typer.Option(None, help="Keep the first N rows. Applied after --max-prompt-tokens."),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
) -> None:
    """AIME-style problems (problem, integer answer; id, url, year kept) as a test set graded by the math reward."""
    _eval_set("aime", source, out, data_source, limit, max_prompt_tokens, tokenizer)


@app.command()
def custom(
    source: str = typer.Option(..., "--source", help=SOURCE_HELP + " CSV/TSV files work too."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    prompt_column: str = typer.Option(..., help="Column with the prompt text (or a list of {role, content})."),
    answer_column: str = typer.Option(..., help="Column with the ground truth for the reward."),
    data_source: str = typer.Option("custom", help="data_source of every row (selects the reward function)."),
    template: str | None = typer.Option(
        None, help="Prompt template with {prompt} (and optionally {COLUMN}); other braces are kept as written."
    ),
    system_prompt: str | None = typer.Option(None, help="System message put before each prompt."),
    limit: int | None = typer.Option(None, help=LIMIT_HELP + " Applied after --max-prompt-tokens."),
    seed: int = typer.Option(0, help=SEED_HELP),
    test_fraction: float = typer.Option(0.1, help=FRACTION_HELP),
    max_prompt_tokens: int | None = typer.Option(None, help=MAX_TOKENS_HELP),
    tokenizer: Path | None = typer.Option(None, help=TOKENIZER_HELP),
) -> None:
    """Convert any jsonl/json/csv/tsv/parquet table with prompt and answer columns to veRL's schema."""
    from cli.data.custom import convert_custom
    from cli.data.filter import make_filter

    try:
        length_filter = make_filter(max_prompt_tokens, tokenizer)
        results = convert_custom(source, out, prompt_column=prompt_column, answer_column=answer_column,
                                 data_source=data_source, template=template, system_prompt=system_prompt,
                                 limit=limit, seed=seed, test_fraction=test_fraction, length_filter=length_filter)
    except (ValueError, OSError) as exc:
        _fail("custom", exc)
    for result in results:
        typer.echo(result.describe(length_filter))
    _reward_hint(data_source)


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A parquet file."),
    rows: int = typer.Option(3, "--rows", help="How many rows to show."),
) -> None:
    """Print a parquet file's schema, row count, data_source counts and first rows; validate veRL prompt files."""
    from cli.data.inspect import inspect_file

    try:
        report, problem = inspect_file(file, rows)
    except (ValueError, OSError) as exc:
        _fail("inspect", exc)
    typer.echo(report)
    if problem is not None:
        _fail("inspect", ValueError(problem))
