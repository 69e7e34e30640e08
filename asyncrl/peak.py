"""The machine's measured dense matmul throughput: the figure every MFU divides by.

``measure(dtype, threads)`` times square matmuls (``2 n^3`` FLOPs each) on the CPU with
``threads`` torch threads (or on the current GPU) and returns FLOP/s. ``peak(...)`` returns the
cached figure for this CPU/GPU, thread count, dtype and torch version, measuring once when there is
none; ``asyncrl bench peak`` measures afresh on an idle machine and overwrites the cache
(``$XDG_CACHE_HOME/asyncrl/peak.json``, else ``~/.cache/asyncrl/peak.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SIZES = {"cpu": 1024, "cuda": 8192}  # big enough to run at the kernels' full rate, small enough to be quick


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "asyncrl" / "peak.json"


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    from asyncrl.hardware import cpu_name

    return cpu_name()


def key(device: str, dtype: str, threads: int) -> str:
    import torch

    threads = threads if device == "cpu" else 1
    return f"{device_name(device)} | {dtype} | {threads} thread(s) | torch {torch.__version__}"


def measure(dtype: str, threads: int, device: str = "cpu", seconds: float = 0.5, n: int | None = None) -> float:
    """FLOP/s of ``n x n`` matmuls in ``dtype`` ("float32" / "bfloat16" / "float16") for ``seconds``."""
    import torch

    n = n or SIZES[device]
    prev = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
        b = torch.randn(n, n, device=device).to(getattr(torch, dtype))
        for _ in range(2):  # warm-up: kernel selection, packing, page faults
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done < 3:
            a @ b
            done += 1
            if device == "cuda":
                torch.cuda.synchronize()
        return 2.0 * n ** 3 * done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)


def _read() -> dict[str, float]:
    try:
        data = json.loads(cache_path().read_text())
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def store(entries: dict[str, float]) -> Path:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**_read(), **entries}, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def peak(dtype: str, threads: int, device: str = "cpu") -> float:
    """The cached peak FLOP/s for this machine, ``dtype`` and ``threads``; measured (and cached)
    when missing. A figure measured while other processes run is low (MFU then reads high):
    ``asyncrl bench peak`` on an idle machine gives the clean one."""
    k = key(device, dtype, threads)
    cached = _read().get(k)
    if cached:
        return cached
    value = measure(dtype, threads, device)
    log.info("measured peak %s: %.1f GFLOP/s (asyncrl bench peak re-measures on an idle machine)", k, value / 1e9)
    try:
        store({k: value})
    except OSError as e:  # an unwritable home: use the figure, do not fail the run
        log.warning("peak cache %s not written: %s", cache_path(), e)
    return value


def run_dtypes(cfg: Any, device: str) -> tuple[str, str]:
    """The dtypes a run computes in: the learner's (bf16 with mixed precision, a bf16 model or a
    usable bf16 autocast, else fp32) and the generators' (``rollout.dtype`` resolved)."""
    from asyncrl.hardware import autocast_bf16_ok, mixed_precision_ok, resolve_dtype

    lr = cfg.learner
    bf16 = (mixed_precision_ok(lr.mixed_precision, device) or cfg.model.learner_dtype == "bfloat16"
            or autocast_bf16_ok(lr.autocast_bf16, device))
    return ("bfloat16" if bf16 else "float32"), resolve_dtype(cfg.rollout.dtype)


def run_peaks(cfg: Any, threads: int, device: str) -> dict[str, float]:
    """FLOP/s a run's MFU figures divide by: the learner's dtype on its ``threads``, and the learner's
    and the generators' dtypes on every core (one GPU on a GPU host)."""
    learner, gen = run_dtypes(cfg, device)
    cores = os.cpu_count() or 1
    return {"learner": peak(learner, threads, device), "learner_all": peak(learner, cores, device),
            "gen_all": peak(gen, cores, device)}


def prime(cfg: Any) -> None:
    """``asyncrl up`` on a CPU host: measure any missing peak now, before the processes start (a figure
    measured while an engine loads would be low and every MFU high). Once per machine: cached."""
    from asyncrl.placement import THREADS, make_plan

    plan = make_plan(cfg)
    if plan.kind != "cpu":
        return  # a GPU learner measures its own device (generators run on other GPUs)
    threads = int(plan.env.get("learner", {}).get(THREADS) or 0) or default_threads()
    try:
        run_peaks(cfg, threads, "cpu")
    except Exception as e:  # a figure for a metric: never a reason not to train
        log.warning("matmul peak not measured (%s: %s); the learner will measure it", type(e).__name__, e)


def default_threads() -> int:
    import torch

    return torch.get_num_threads()
