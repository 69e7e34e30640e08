"""``asyncrl sandbox run FILE.py``: run one program under the sandbox's rules and print the JSON result,
so users can see what their code reward or ``python`` tool will experience (docs/sandbox.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(help="Run untrusted Python the way code rewards and the python tool do.", no_args_is_help=True,
                  add_completion=False)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"asyncrl sandbox run: {message}", err=True)
    raise typer.Exit(code)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {what} {path}: {exc.strerror if isinstance(exc, OSError) else exc}")


@app.command()
def run(file: Path = typer.Argument(..., help="The Python program (runs as main.py in an empty working dir)."),
        timeout: float = typer.Option(10.0, "--timeout", help="Wall-clock limit in seconds (also the CPU limit)."),
        memory_mb: int = typer.Option(512, "--memory-mb", help="Address-space limit per process, MiB."),
        stdin: Path | None = typer.Option(None, "--stdin", help="File given to the program on stdin.")) -> None:
    """Run FILE in the sandbox; print {exit_code, stdout, stderr, time_s, max_rss_mb, limit_hit, isolation}.
    Exits 0 whenever the program ran, whatever it did; 2 for bad input, 1 if the sandbox cannot run here."""
    from sandbox import Limits, SandboxError, run_python

    code = _read(file, "program")
    text = _read(stdin, "stdin file") if stdin is not None else ""
    try:
        limits = Limits(timeout_s=timeout, cpu_s=timeout, memory_mb=memory_mb)
    except ValueError as exc:
        _fail(str(exc))
    try:
        result = run_python(code, stdin=text, limits=limits)
    except SandboxError as exc:
        _fail(f"the sandbox cannot run here: {exc}", 1)
    typer.echo(json.dumps(result.to_json(), indent=2))
