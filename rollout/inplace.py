"""A fast in-place weight apply for a live vLLM model, used instead of ``reload_weights``.

Why: vLLM's ``reload_weights`` is a layer-wise reload. It puts every layer back on the meta
device, re-materialises it, loads the buffered weights through the original loaders, re-runs
``process_weights_after_loading`` (on CPU: the oneDNN/sgl GEMM dispatch and prepacking) and
copies the results back. For SmolLM2-135M on a 2-core CPU that is 0.6-2.3 s per sync, while
copying the same bytes into the existing parameters through the model's own ``load_weights``
(which knows the HF-name -> fused ``qkv_proj`` / ``gate_up_proj`` slice mapping) takes ~0.04 s.

That shortcut is only correct when every layer computes from its plain ``weight`` parameter.
On CPU, vLLM may instead have packed a layer's weight into a kernel handle at start-up (and,
for linear layers, replaced ``weight`` by an empty tensor); copying into the parameter would
then either fail or, worse, be silently ignored. So :func:`inspect_model` *tests* every
GEMM layer by behaviour (does ``cpu_linear`` compute with the weight it is given?) and
reports a reason to fall back when any layer does not qualify. The one packed case handled
here is an embedding / LM head that keeps its weight next to a packed copy (vLLM packs those
with ``remove_weight=False``): after the copy its packed copy is rebuilt from the new weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

PLAIN_METHODS = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod")


@dataclass
class InplacePlan:
    """Whether the fast path applies to a model, and which layers need re-packing after it."""

    reason: str | None  # None: the fast path is safe; otherwise why not (the fallback is used)
    repack: list[Any] = field(default_factory=list)  # vLLM layers with a quant_method
    expected: set[str] = field(default_factory=set)  # vLLM parameter names a full update must touch


def _honors_weight_arg(layer: Any) -> bool:
    """True when ``layer.cpu_linear(x, w, None)`` computes ``x @ w.T`` with the ``w`` passed in.

    A packed layer ignores ``w`` and multiplies by its prepacked copy of the start-up weight.
    ``layer`` is a vLLM CPU GEMM layer (untyped: ``weight``, ``cpu_linear``, ``quant_method``).
    """
    w = layer.weight
    gen = torch.Generator().manual_seed(1234)
    probe = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(w.dtype)
    x = torch.randn((2, w.shape[1]), generator=gen, dtype=torch.float32).to(w.dtype)
    with torch.no_grad():
        got = layer.cpu_linear(x, probe, None)
        want = torch.nn.functional.linear(x, probe)
    return bool(torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item()))


def inspect_model(model: torch.nn.Module, quantization: str | None) -> InplacePlan:
    """Decide, by inspecting the loaded model, whether :func:`apply_inplace` is correct for it."""
    if quantization is not None:
        return InplacePlan(f"quantized model ({quantization})")
    if not callable(getattr(model, "load_weights", None)):
        return InplacePlan(f"{type(model).__name__} has no load_weights")
    repack: list[Any] = []
    for name, mod in model.named_modules():
        method = getattr(mod, "quant_method", None)
        if method is not None and type(method).__name__ not in PLAIN_METHODS:
            return InplacePlan(f"{name} uses {type(method).__name__}")
        if not hasattr(mod, "cpu_linear"):
            continue  # not a CPU GEMM layer (or not on CPU): computes from its parameters
        w = getattr(mod, "weight", None)
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.numel() == 0:
            return InplacePlan(f"{name}: weight packed into a kernel handle at start-up "
                               f"(parameter shape {tuple(w.shape) if w is not None else None})")
        if _honors_weight_arg(mod):
            continue
        if type(method).__name__ == "UnquantizedEmbeddingMethod":
            repack.append(mod)  # keeps its weight; its packed copy is rebuilt after the update
        else:
            return InplacePlan(f"{name}: GEMM uses a packed copy, not its weight parameter")
    expected = {n for n, _ in model.named_parameters()}
    return InplacePlan(None, repack, expected)


def apply_inplace(model: Any, plan: InplacePlan,
                  weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy HF-named ``weights`` into the model's existing parameters, then re-pack ``plan.repack``.

    ``model`` is the vLLM model :func:`inspect_model` accepted (an ``nn.Module`` with ``load_weights``).

    Raises when the update did not touch every parameter: serving a half-updated model would be
    silently wrong (the sender always sends a full state dict).
    """
    assert plan.reason is None, plan.reason
    with torch.no_grad():
        loaded = set(model.load_weights(weights))
        for mod in plan.repack:
            mod.quant_method.process_weights_after_loading(mod)
    missing = plan.expected - loaded
    if missing:
        raise RuntimeError(f"in-place weight update left {len(missing)} parameter(s) unchanged: "
                           f"{sorted(missing)[:5]}")
