"""What this machine computes fast, so that ``"auto"`` settings never pick a slow path.

On CPUs without native bf16 (AVX2-only machines, e.g. many AMD EPYC/Ryzen parts) PyTorch and
vLLM emulate bf16 matmuls: measured here (AMD EPYC, AVX2, 2 cores) a 512x576 @ 576x1536
matmul took 0.77 s in bf16 vs 0.056 s in fp32, and a SmolLM2-135M learner step with bf16
autocast ran ~100 s instead of a few seconds. bf16 pays off on GPUs and on CPUs with
AVX512-BF16 or AMX.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def fast_bf16() -> bool:
    """True on CUDA, or on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX)."""
    import torch

    if torch.cuda.is_available():
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def resolve_dtype(name: str) -> str:
    """A config dtype with ``"auto"`` resolved: bf16 where it is fast, else fp32."""
    if name != "auto":
        return name
    return "bfloat16" if fast_bf16() else "float32"


@functools.cache
def bf16_compute_ok(requested: bool, device_type: str, key: str) -> bool:
    """Whether to compute in bf16 as the option ``key`` asks: only when asked for and fast here
    (warned once per option otherwise)."""
    if not requested:
        return False
    if device_type == "cuda" or fast_bf16():
        return True
    log.warning("%s is on but this CPU has no native bf16 (no AVX512-BF16/AMX): bf16 matmuls would be ~10x "
                "slower than fp32 here, so the learner computes in fp32", key)
    return False


def autocast_bf16_ok(requested: bool, device_type: str) -> bool:
    """Whether to run bf16 autocast (``autocast_bf16``)."""
    return bf16_compute_ok(requested, device_type, "autocast_bf16")


def mixed_precision_ok(requested: bool, device_type: str) -> bool:
    """Whether to run FSDP2 bf16 mixed precision (``mixed_precision``)."""
    return bf16_compute_ok(requested, device_type, "mixed_precision")


def cpu_name() -> str:
    """The CPU model and whether it computes bf16 natively (benchmark and eval figures depend on both)."""
    import os
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = "AVX512_BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{name}, {isa}, {os.cpu_count()} cores"
