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
reports a reason to fall back when any layer does not qualify. Two packed cases are handled,
each by re-running what vLLM itself runs after loading (``process_weights_after_loading``:
``dispatch_cpu_unquantized_gemm`` in vllm/model_executor/layers/utils.py, vLLM 0.32.0):

- an embedding / LM head that keeps its weight next to a packed copy (``remove_weight=False``):
  after the copy its packed copy is rebuilt from the new weight;
- a linear layer whose weight was packed into a kernel handle and emptied (``remove_weight=True``:
  oneDNN on fp32 and on AVX512-BF16 CPUs, sgl on AMX): the sync copies into a full-size *staging*
  weight built from the metadata vLLM recorded for its own reloads (same class, same weight
  loader, so fused q/k/v and gate/up slices land as in a reload), then the layer is re-dispatched,
  which packs a fresh handle from it and empties the parameter again. The staging weights are
  kept between syncs (one plain copy of those layers' weights in memory).

Whether re-dispatching a linear layer really packs the weight it is given is tested before any
weight is touched (on a stand-in layer of the same shape), and once more on the real layers after
the first sync (:func:`verify_refresh`); a failure makes the generator use vLLM's reload instead.
"""

from __future__ import annotations

import time
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
    # (layer, full-size staging weight): linear layers whose weight vLLM packed away (see the docstring)
    staged: list[tuple[Any, torch.nn.Parameter]] = field(default_factory=list)
    verified: bool = False  # the re-packed layers were checked after a real sync (verify_refresh)
    loaded: list[int] = field(default_factory=list)  # per staged layer: elements copied in this sync
    repack_s: float = 0.0  # this sync's seconds in process_weights_after_loading


def _repack(plan: InplacePlan, i: int) -> None:
    """Re-dispatch staged layer ``i`` (vLLM packs a fresh handle from its staging weight)."""
    t0 = time.perf_counter()
    mod = plan.staged[i][0]
    mod.quant_method.process_weights_after_loading(mod)
    plan.loaded[i] = -1  # done for this sync
    plan.repack_s += time.perf_counter() - t0


def _watch_loads(plan: InplacePlan) -> None:
    """Wrap each staging weight's loader so a layer is re-packed as soon as all its elements are in,
    while later buckets are still arriving (as vLLM's own layer-wise reload does: ``online_process_loader``
    in model_loader/reload/layerwise.py counts with the same ``CopyCounter``). A loader that copies a
    weight twice would re-pack too early: the check after the first sync (:func:`verify_refresh`)
    catches that, and every layer not re-packed by the end of a sync is re-packed then."""
    plan.loaded = [0] * len(plan.staged)
    if not plan.staged:
        return  # GPU, or nothing packed away: a plain copy
    from vllm.model_executor.model_loader.reload.meta import CopyCounter

    for i, (_, staging) in enumerate(plan.staged):
        original, total = staging.weight_loader, staging.numel()  # type: ignore[attr-defined]

        def loader(*args: Any, _i: int = i, _original: Any = original, _total: int = total, **kwargs: Any) -> Any:
            with CopyCounter() as counter:
                ret = _original(*args, **kwargs)
            if plan.loaded[_i] >= 0:
                plan.loaded[_i] += min(counter.copied_numel, _total)
                if plan.loaded[_i] >= _total:
                    _repack(plan, _i)
            return ret

        staging.weight_loader = loader  # type: ignore[attr-defined]  # our copy's attribute, not vLLM's record


def _probe(shape: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random weight of ``shape`` and a 2-row input for it."""
    gen = torch.Generator().manual_seed(1234)
    w = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    x = torch.randn((2, shape[1]), generator=gen, dtype=torch.float32).to(dtype)
    return w, x


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return bool(torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item()))


def _honors_weight_arg(layer: Any) -> bool:
    """True when ``layer.cpu_linear(x, w, None)`` computes ``x @ w.T`` with the ``w`` passed in.

    A packed layer ignores ``w`` and multiplies by its prepacked copy of the start-up weight.
    ``layer`` is a vLLM CPU GEMM layer (untyped: ``weight``, ``cpu_linear``, ``quant_method``).
    """
    probe, x = _probe(layer.weight.shape, layer.weight.dtype)
    with torch.no_grad():
        return _close(layer.cpu_linear(x, probe, None), torch.nn.functional.linear(x, probe))


def _staging_weight(layer: Any) -> torch.nn.Parameter | None:
    """A full-size, empty weight parameter for ``layer`` as it was before vLLM packed it away.

    Built from the metadata vLLM records at load time for its own reloads (class, shape and
    attributes such as the weight loader; vllm/model_executor/model_loader/reload/meta.py), so
    the model's ``load_weights`` fills it exactly as it filled the original. None if not recorded.
    """
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
    from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    info = LAYERWISE_INFO.get(layer)
    meta = info.restore_metadata[0].get("weight") if info is not None else None
    if meta is None or meta.ndim != 2:
        return None
    with info.restore_device:  # type: ignore[union-attr]
        weight = materialize_meta_tensor(meta)  # copies the attributes: vLLM's record stays as it is
    return restore_layer_refs(weight, layer)  # type: ignore[return-value]


def _repack_honors_weight(layer: Any, shape: torch.Size, dtype: torch.dtype) -> bool:
    """True when re-running ``layer``'s ``process_weights_after_loading`` packs the weight it finds.

    Tested on a stand-in module (same method, shape and dtype, hence the same kernel choice),
    so the real layer is not touched before the sync.
    """
    probe, x = _probe(shape, dtype)
    stand_in: Any = torch.nn.Module()
    stand_in.weight = torch.nn.Parameter(probe.clone(), requires_grad=False)
    stand_in.register_parameter("bias", None)
    with torch.no_grad():
        layer.quant_method.process_weights_after_loading(stand_in)
        return _close(stand_in.cpu_linear(x, stand_in.weight, None), torch.nn.functional.linear(x, probe))


def _stage(name: str, mod: Any, method: Any, probed: dict[tuple, bool]) -> tuple[Any, str | None]:
    """The staging weight for a linear layer whose weight was packed away, or why there is none."""
    if type(method).__name__ != "UnquantizedLinearMethod":
        return None, f"{name}: weight packed into a kernel handle by {type(method).__name__}"
    staging = _staging_weight(mod)
    if staging is None:
        return None, f"{name}: weight packed into a kernel handle, and vLLM kept no record of its layout"
    key = (type(method), tuple(staging.shape), staging.dtype)
    if key not in probed:
        probed[key] = _repack_honors_weight(mod, staging.shape, staging.dtype)
    if not probed[key]:
        return None, f"{name}: re-running process_weights_after_loading does not pack the new weight"
    return staging, None


def inspect_model(model: torch.nn.Module, quantization: str | None) -> InplacePlan:
    """Decide, by inspecting the loaded model, whether :func:`apply_inplace` is correct for it."""
    if quantization is not None:
        return InplacePlan(f"quantized model ({quantization})")
    if not callable(getattr(model, "load_weights", None)):
        return InplacePlan(f"{type(model).__name__} has no load_weights")
    repack: list[Any] = []
    staged: list[tuple[Any, torch.nn.Parameter]] = []
    probed: dict[tuple, bool] = {}  # one stand-in test per (method, shape, dtype)
    for name, mod in model.named_modules():
        method = getattr(mod, "quant_method", None)
        if method is not None and type(method).__name__ not in PLAIN_METHODS:
            return InplacePlan(f"{name} uses {type(method).__name__}")
        if not hasattr(mod, "cpu_linear"):
            continue  # not a CPU GEMM layer (or not on CPU): computes from its parameters
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and w.numel() == 0:  # vLLM packed it and emptied the parameter
            staging, why = _stage(name, mod, method, probed)
            if why is not None:
                return InplacePlan(why)
            staged.append((mod, staging))
            continue
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            return InplacePlan(f"{name}: unexpected weight (parameter shape "
                               f"{tuple(w.shape) if w is not None else None})")
        if _honors_weight_arg(mod):
            continue
        if type(method).__name__ == "UnquantizedEmbeddingMethod":
            repack.append(mod)  # keeps its weight; its packed copy is rebuilt after the update
        else:
            return InplacePlan(f"{name}: GEMM uses a packed copy, not its weight parameter")
    expected = {n for n, _ in model.named_parameters()}
    plan = InplacePlan(None, repack, expected, staged)
    _watch_loads(plan)
    return plan


def apply_inplace(model: Any, plan: InplacePlan,
                  weights: Iterable[tuple[str, torch.Tensor]]) -> float:
    """Copy HF-named ``weights`` into the model's existing parameters, then re-pack what needs it;
    return the seconds spent re-packing.

    ``model`` is the vLLM model :func:`inspect_model` accepted (an ``nn.Module`` with ``load_weights``).
    Layers in ``plan.staged`` take their staging weight for the copy and are re-dispatched as soon
    as it is complete (vLLM's ``process_weights_after_loading``: a fresh packed handle, the parameter
    emptied again); any not re-dispatched by the end, also when the copy fails half-way, are
    re-dispatched then, so the model's layout is the same after every call.

    Raises when the update did not touch every parameter: serving a half-updated model would be
    silently wrong (the sender always sends a full state dict).
    """
    assert plan.reason is None, plan.reason
    plan.repack_s = 0.0
    with torch.no_grad():
        for i, (mod, staging) in enumerate(plan.staged):
            mod.weight = staging
            plan.loaded[i] = 0
        try:
            loaded = set(model.load_weights(weights))
        finally:
            for i in range(len(plan.staged)):
                if plan.loaded[i] >= 0:
                    _repack(plan, i)
        t0 = time.perf_counter()
        for mod in plan.repack:
            mod.quant_method.process_weights_after_loading(mod)
        repack_s = plan.repack_s + time.perf_counter() - t0
    missing = plan.expected - loaded
    if missing:
        raise RuntimeError(f"in-place weight update left {len(missing)} parameter(s) unchanged: "
                           f"{sorted(missing)[:5]}")
    return repack_s


def verify_refresh(plan: InplacePlan) -> str | None:
    """After a sync: does every re-packed linear layer compute with the weight just copied in?

    Returns None, or the first layer (by index) whose kernel disagrees with its staging weight.
    """
    with torch.no_grad():
        for i, (mod, staging) in enumerate(plan.staged):
            gen = torch.Generator().manual_seed(1234)
            x = torch.randn((2, staging.shape[1]), generator=gen, dtype=torch.float32).to(staging.dtype)
            if not _close(mod.cpu_linear(x, mod.weight, None), torch.nn.functional.linear(x, staging)):
                return f"re-packed linear layer #{i} ({type(mod).__name__}) does not compute with the synced weight"
    return None
