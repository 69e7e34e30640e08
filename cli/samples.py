"""``asyncrl samples RUN_DIR``: print a run's sample dumps (:mod:`learner.samples`) readably.

    asyncrl samples runs/quickstart                    # the newest training dump, every sample
    asyncrl samples runs/quickstart --step 40 --worst 5
    asyncrl samples runs/quickstart --split val --limit 3
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from asyncrl.data.format import DataError


def dump_path(run_dir: Path, split: str, step: int | None) -> Path:
    """The dump of ``split`` at ``step`` (None: the newest); DataError naming what exists otherwise."""
    folder = Path(run_dir) / "samples"
    found = sorted(folder.glob(f"{split}_step_*.parquet")) if folder.is_dir() else []
    if not found:
        raise DataError(f"{folder}: no {split} sample dumps (written every logging.samples_every steps"
                        f"{' and at each validation' if split == 'val' else ''}; is {run_dir} a run directory?)")
    if step is None:
        return found[-1]
    path = folder / f"{split}_step_{step:06d}.parquet"
    if not path.is_file():
        steps = ", ".join(str(int(p.stem.rsplit("_", 1)[1])) for p in found)
        raise DataError(f"--step {step}: no {split} dump for that step in {folder} (steps: {steps})")
    return path


def select(rows: list[dict[str, Any]], worst: int | None, limit: int | None) -> list[dict[str, Any]]:
    """The ``worst`` lowest-reward samples (ties: the larger learner/behaviour gap first), or the
    first ``limit``, or all."""
    if worst is not None:
        def key(r: dict[str, Any]) -> tuple[float, float]:
            reward = r["reward"] if r["reward"] is not None else -math.inf  # unscored: worst of all
            gap = abs(r["logprob_gap"]) if r["logprob_gap"] is not None else 0.0
            return reward, -gap
        return sorted(rows, key=key)[:worst]
    return rows[:limit] if limit is not None else rows


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(path: Path, rows: list[dict[str, Any]], total: int, max_chars: int) -> Any:
    """A rich renderable: one panel per sample (header of numbers, the prompt's end, the response)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    def clip(s: str, head: bool) -> str:
        if len(s) <= max_chars:
            return s
        return ("…" + s[-max_chars:]) if head else (s[:max_chars] + "…")

    parts: list[Any] = [Text(f"{path}: {len(rows)} of {total} samples", style="bold")]
    for r in rows:
        where = f"{r['split']}" + (f"/{r['val_set']}" if r["val_set"] else "")
        head = (f"step {r['step']} · {where} · prompt {r['prompt_id']} #{r['sample_index']} · {r['data_source']} · "
                f"reward {_num(r['reward'], '.3g')} · v{r['policy_version']} (staleness {r['staleness']}) · "
                f"gap {_num(r['logprob_gap'], '+.3f')} · {r['response_tokens']} tok, {r['finish_reason']}")
        body = Text()
        body.append("prompt   ", style="dim")
        body.append(clip(r["prompt"], head=True) + "\n")
        body.append("response ", style="dim")
        body.append(clip(r["response"], head=False) + "\n")
        body.append("truth    ", style="dim")
        body.append(str(r["ground_truth"]))
        if r["reward_error"]:
            body.append("\nerror    ", style="dim")
            body.append(r["reward_error"], style="red")
        if r.get("num_tool_calls"):
            body.append(f"\n{r['num_turns']} turns, {r['num_tool_calls']} tool calls", style="dim")
        parts.append(Panel(body, title=head, title_align="left", expand=True))
    return Group(*parts)


def show(run_dir: Path, split: str, step: int | None, worst: int | None, limit: int | None,
         max_chars: int) -> None:
    """Print the chosen samples (exit 2 through DataError when there is nothing to print)."""
    import pyarrow.parquet as pq
    from rich.console import Console

    if worst is not None and worst < 1:
        raise DataError(f"--worst {worst}: must be at least 1")
    path = dump_path(run_dir, split, step)
    rows = pq.read_table(path).to_pylist()
    Console().print(render(path, select(rows, worst, limit), len(rows), max_chars))
