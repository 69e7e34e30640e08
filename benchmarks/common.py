"""Helpers shared by the benchmark scripts: model choice, result files, a markdown table."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "models" / "smollm2-135m"


def pick_model(arg: str | None, smoke: bool, tmp: Path) -> Path:
    """``arg`` if given; else SmolLM2-135M when imported and not ``smoke``; else a fresh tiny model."""
    if arg:
        return Path(arg)
    if not smoke and (SMOLLM2 / "config.json").is_file():
        return SMOLLM2
    from cli.model.tiny import write_tiny_model

    return write_tiny_model(tmp / "tiny")


def tiny_sets(tmp: Path) -> list[str]:
    """Overrides running a config on a fresh tiny model and small arithmetic data under ``tmp``."""
    from cli.data.arith import write_arith
    from cli.model.tiny import write_tiny_model

    train, test = write_arith(tmp / "data", n_train=400, n_test=16)
    return [f"model.path={write_tiny_model(tmp / 'tiny')}", f"data.train={train}", f"data.test={test}"]


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def run_worker(argv: list[str], timeout: float = 1800, echo: bool = False) -> dict[str, Any]:
    """Run ``python argv...`` (a benchmark's worker mode) and parse the JSON on its last stdout line.
    ``echo``: the worker's stderr goes straight to ours (its progress, live) instead of being captured."""
    res = subprocess.run([sys.executable] + argv, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=None if echo else subprocess.PIPE, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"worker {argv} failed:\n{res.stdout[-3000:]}\n{(res.stderr or '')[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out: Path, name: str, results: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine(), **results}
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{name}.md").write_text(f"# {name} ({results['date']}, {results['machine']})\n\n{markdown}\n")
    print(markdown)
    print(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")
