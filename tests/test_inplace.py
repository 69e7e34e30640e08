"""rollout/inplace.py on vLLM's real CPU GEMM dispatch, without an engine.

A linear layer packed the way vLLM 0.32 packs it after loading (``dispatch_cpu_unquantized_gemm``
with ``remove_weight=True``: a oneDNN/sgl handle, the weight parameter emptied, on CPUs where those
kernels exist) must be updated by the in-place path: copied into a staging weight, re-dispatched,
and then compute with the new weight. A kernel that keeps its start-up weight whatever it is
given must be refused before any weight is touched, and a layer that still computes with an old
weight after a sync must fail that sync and send every later one down vLLM's reload.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch

pytest.importorskip("vllm")


def _copy_loader(param: torch.Tensor, loaded: torch.Tensor) -> None:
    param.data.copy_(loaded)


class UnquantizedLinearMethod:
    """vLLM's method as far as rollout.inplace sees it (named like it): its CPU
    ``process_weights_after_loading`` is vllm/model_executor/layers/linear.py's."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(layer, remove_weight=True)


class _Stale(UnquantizedLinearMethod):
    """A kernel that packs the first weight it sees and ignores every later one."""

    first: torch.Tensor | None = None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if self.first is None:
            self.first = layer.weight.detach().clone()
        first = self.first
        layer.cpu_linear = lambda x, w, b: torch.nn.functional.linear(x, first.to(x.dtype))
        layer.weight = torch.nn.Parameter(torch.empty(0, dtype=first.dtype), requires_grad=False)


StaleMethod = type("UnquantizedLinearMethod", (_Stale,), {})  # named like vLLM's: only its behaviour differs


class Linear(torch.nn.Module):
    def __init__(self, n: int, k: int, dtype: torch.dtype, method: UnquantizedLinearMethod) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(n, k, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = _copy_loader  # type: ignore[attr-defined]
        self.register_parameter("bias", None)
        self.quant_method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cpu_linear(x, self.weight, None)


class Model(torch.nn.Module):
    """Loaded as vLLM loads a model: weights copied in, metadata recorded, then packed."""

    def __init__(self, dtype: torch.dtype, method: type[UnquantizedLinearMethod] = UnquantizedLinearMethod) -> None:
        from vllm.model_executor.model_loader.reload import record_metadata_for_reloading

        super().__init__()
        self.up, self.down = Linear(256, 128, dtype, method()), Linear(128, 256, dtype, method())
        self.load_weights(_weights(0, dtype))
        record_metadata_for_reloading(self)  # as vLLM's loader does before processing
        for layer in (self.up, self.down):
            layer.quant_method.process_weights_after_loading(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        for name, t in weights:
            params[name].weight_loader(params[name], t)
        return set(params)


def _weights(seed: int, dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [("up.weight", (torch.randn(256, 128, generator=g) / 8).to(dtype)),
            ("down.weight", (torch.randn(128, 256, generator=g) / 8).to(dtype))]


def _reference(weights: list[tuple[str, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    w = dict(weights)
    return torch.nn.functional.linear(torch.nn.functional.linear(x, w["up.weight"]), w["down.weight"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_layers_take_the_synced_weights(dtype: torch.dtype) -> None:
    from rollout.inplace import apply_inplace, inspect_model, verify_refresh

    model = Model(dtype)
    x = torch.randn(4, 128).to(dtype)
    plan = inspect_model(model, None)
    assert plan.reason is None, plan.reason
    packed = [m for m in (model.up, model.down) if m.weight.numel() == 0]
    assert len(plan.staged) == len(packed)  # packed on this CPU: staged; plain F.linear: nothing to do
    for seed in (1, 2):  # twice: the staging weights and re-dispatch are reused
        new = _weights(seed, dtype)
        apply_inplace(model, plan, iter(new))
        assert all(m.weight.numel() == 0 for m in packed)  # packed again, as vLLM leaves it
        with torch.no_grad():
            torch.testing.assert_close(model(x).float(), _reference(new, x).float(), rtol=2e-2, atol=2e-2)
        assert verify_refresh(plan) is None


def test_kernel_that_ignores_a_new_weight_is_refused_before_the_sync() -> None:
    from rollout.inplace import inspect_model

    model = Model(torch.float32, StaleMethod)
    before = [m.weight for m in (model.up, model.down)]
    plan = inspect_model(model, None)
    assert plan.reason is not None and "does not pack the new weight" in plan.reason
    assert [m.weight for m in (model.up, model.down)] == before  # untouched


def test_stale_layer_after_the_first_sync_fails_it_and_falls_back_to_reload() -> None:
    from rollout.inplace import apply_inplace, inspect_model
    from rollout.vllm_ext import WeightSyncExtension

    model = Model(torch.float32)
    plan = inspect_model(model, None)
    if not plan.staged:
        pytest.skip("vLLM keeps fp32 linear weights plain on this CPU: nothing is re-packed")
    old = model.up.cpu_linear
    apply_inplace(model, plan, iter(_weights(1, torch.float32)))
    model.up.cpu_linear = old  # as if re-dispatching had left the start-up kernel in place
    ext = WeightSyncExtension()
    with pytest.raises(RuntimeError, match="did not take effect"):
        ext._asyncrl_check_refresh(plan)
    assert ext._asyncrl_plan_cached.reason is not None  # every later sync: vLLM's reload_weights
    assert not plan.verified
