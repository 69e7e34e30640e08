"""Grouped LoRA matmuls for vLLM's CPU LoRA path (runs inside the vLLM worker processes).

vLLM 0.32's CPU punica ops (``vllm/lora/ops/torch_ops/lora_ops.py``, used by ``PunicaWrapperCPU``)
gather one ``[out, r]`` weight matrix *per token* (``lora_b_weights[lora_indices_tensor]``) and
contract with ``einsum``: for a prefill of 800 tokens through SmolLM2's MLP that copies hundreds
of MB per layer, and LoRA generation ran ~4x slower than the base model here. A batch holds
one or two adapters, so grouping tokens by adapter slot and doing one matmul per slot computes
the same values (same slot selection, including vLLM's ``-1`` index picking the last slot by
Python indexing) with no per-token copies.

:func:`install` replaces the six ops in the two modules that hold them; the LoRA round-trip tests
(``tests/test_lora.py``: a live engine against a fresh engine on the merged model, 1e-4) run
through them. GPUs use vLLM's Triton kernels and are not touched.
"""

from __future__ import annotations

import os

import torch

_installed = False


def _per_slot(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``out[t] = inputs[t] @ weights[indices[t]].T`` (``weights``: ``[slots, (1,) o, i]``), one matmul per slot."""
    w = weights.squeeze(1) if weights.dim() == 4 else weights
    x = inputs.to(dtype)
    idx = indices.to(torch.long) % w.shape[0]  # -1 -> the last slot, as tensor[-1] does in vLLM's op
    slots = torch.unique(idx).tolist()
    if len(slots) == 1:
        return x @ w[slots[0]].to(dtype).T
    out = x.new_empty((x.shape[0], w.shape[1]))
    for s in slots:
        rows = idx == s
        out[rows] = x[rows] @ w[s].to(dtype).T
    return out


def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, :outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset:slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset:slice_offset + slice_size] = outputs


def _tokens(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, scaling: float) -> None:
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _tokens(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, add_inputs: bool = False) -> None:
    bgmv_expand(inputs, lora_b_weights, output_tensor, _tokens(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      batches: int, max_seq_length: int, token_nums: int, slice_offset: int, slice_size: int,
                      add_inputs: bool = False) -> None:
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _tokens(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def install(adapter_manager: object) -> bool:
    """Use these ops where the LoRA manager's punica wrappers are vLLM's CPU ones; True if they are
    (now) installed. ``ASYNCRL_LORA_OPS=vllm`` keeps vLLM's own (for side-by-side benchmarks)."""
    global _installed
    wrappers = getattr(adapter_manager, "punica_wrapper_mapping", {}).values()
    if os.environ.get("ASYNCRL_LORA_OPS") == "vllm" or not any(
            type(w).__name__ == "PunicaWrapperCPU" for w in wrappers):
        return False
    if not _installed:
        import vllm.lora.ops.torch_ops as pkg
        import vllm.lora.ops.torch_ops.lora_ops as ops
        import vllm.lora.punica_wrapper.punica_cpu as cpu

        for name in OPS:
            for module in (ops, pkg, cpu):
                setattr(module, name, globals()[name])
        _installed = True
    return True
