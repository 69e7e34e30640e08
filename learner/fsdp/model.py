"""Loading the policy under FSDP2 and exporting its full HF-named state dict."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.auto_factory import _BaseAutoModelClass

from asyncrl.config import LoraSection, ShardingFields
from asyncrl.hardware import mixed_precision_ok
from learner.fsdp import lora as lora_mod

log = logging.getLogger("learner.model")
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def init_distributed() -> None:
    """Join torchrun's group if launched by it, else a world-size-1 gloo group."""
    if dist.is_initialized():
        return
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def load_policy(path: Path, dtype: str, opts: ShardingFields | None = None, lora: LoraSection | None = None,
                lora_key: str = "learner.lora") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The HF causal LM at ``path``, each decoder layer and the root wrapped with fully_shard.

    ``lora`` (enabled): wrapped with PEFT adapters first (:mod:`learner.fsdp.lora`); the returned
    module is then a ``PeftModel`` (callable like the HF model; ``lora_key`` names the config key
    in errors)."""
    init_distributed()
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **attention_kwargs(opts))
    hf.config.use_cache = False
    model: PreTrainedModel = hf
    if lora is not None and lora.enabled:  # a PeftModel, used like the HF model it wraps
        model = cast(PreTrainedModel, lora_mod.apply_lora(hf, lora, path, lora_key))
    return shard(model, decoder_layers(model, path), opts), tokenizer


def attention_kwargs(opts: ShardingFields | None) -> dict[str, str]:
    """``from_pretrained`` keyword arguments choosing the attention kernel (none: transformers' default)."""
    return {"attn_implementation": opts.attn_implementation} if opts and opts.attn_implementation else {}


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimiser updates (a LoRA policy's adapters; every parameter otherwise)."""
    return [p for p in model.parameters() if p.requires_grad]


def decoder_layers(model: torch.nn.Module, path: Path) -> torch.nn.ModuleList:
    """The transformer blocks of an HF decoder (``model.layers``), each sharded on its own."""
    model = lora_mod.base_model(model)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{path}: unsupported architecture {type(model).__name__} (no model.layers)")
    return layers


def shard(root: ModuleT, layers: torch.nn.ModuleList, opts: ShardingFields | None = None) -> ModuleT:
    """Move to the accelerator if any, then FSDP2: one unit per layer plus the root.

    ``opts``: bf16 mixed precision with fp32 reduction, activation checkpointing of each
    layer, CPU offload (accelerators only; on CPU everything already lives in host memory).
    """
    opts = opts or ShardingFields()
    cuda = torch.cuda.is_available()
    if cuda:
        root.to(torch.device("cuda", torch.cuda.current_device()))
    if opts.gradient_checkpointing:  # the HF model itself, or the one a wrapper holds
        hf = next((m for m in root.modules() if isinstance(m, PreTrainedModel)), None)
        if hf is None:
            raise ValueError(f"{type(root).__name__} does not support gradient checkpointing")
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        root.train()  # HF checkpoints only in training mode (from_pretrained returns eval mode)
    kwargs: dict = {}
    if mixed_precision_ok(opts.mixed_precision, "cuda" if cuda else "cpu"):
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if opts.cpu_offload and cuda:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    elif opts.cpu_offload:
        log.info("cpu_offload: no accelerator, parameters and optimizer state are already in CPU memory")
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)
    return root


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded HF-named tensors on CPU (every rank participates; rank 0 gets them all)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # A model's state dict holds tensors only (torch types it as any state-dict value).
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=opts))


def sync_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """:func:`full_state_dict` for a weight sync. With one learner rank every shard already is the
    whole tensor: return views of the live parameters (the sync packs them into its buffers at
    once) instead of gathering a fresh full-precision copy of the model."""
    if dist.get_world_size() > 1:
        return full_state_dict(model)
    return {k: (v.to_local() if isinstance(v, DTensor) else v).detach() for k, v in model.state_dict().items()}


def broadcast_items(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Tensors to send to vLLM: a tied ``lm_head.weight`` is skipped (vLLM ties it itself).
    A LoRA policy sends its adapter (and ``modules_to_save``) only: :func:`lora.sync_items`."""
    if lora_mod.is_adapted(model):
        return lora_mod.sync_items(state)
    tied = getattr(model.config, "tie_word_embeddings", False)
    return [(k, v) for k, v in state.items() if not (tied and k == "lm_head.weight")]


def save_hf(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path,
            auto_cls: type[_BaseAutoModelClass] = AutoModelForCausalLM, prefix: str = "") -> Path:
    """Write an HF checkpoint directory that transformers and vLLM load.

    ``prefix``: strip it from state-dict keys (for HF models wrapped in another module).
    A LoRA policy writes its PEFT adapter to ``out/adapter`` and, with ``merged_export``, the merged
    model to ``out`` (see :func:`save_adapted`).
    """
    if lora_mod.is_adapted(model):
        return save_adapted(model, tokenizer, out)
    state = {k.removeprefix(prefix): v for k, v in full_state_dict(model).items()}
    hf = model.get_submodule(prefix.rstrip(".")) if prefix else model
    if dist.get_rank() == 0:
        _write_hf(hf, tokenizer, state, out, auto_cls)
    dist.barrier()
    return out


def save_adapted(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """A LoRA policy's export: the PEFT adapter in ``out/adapter`` and (``lora.merged_export``) the
    merged HF model in ``out`` itself, which vLLM and transformers load like any export."""
    state = full_state_dict(model)
    if dist.get_rank() == 0:
        lora_mod.save_adapter(model, state, out / "adapter")
        if lora_mod.settings(model).merged_export:
            merged_state = lora_mod.merged_state(state, lora_mod.adapter_config(model))
            _write_hf(lora_mod.base_model(model), tokenizer, merged_state, out, AutoModelForCausalLM)
        else:
            tokenizer.save_pretrained(out)
    dist.barrier()
    return out


def _write_hf(hf: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, state: dict[str, torch.Tensor], out: Path,
              auto_cls: type[_BaseAutoModelClass]) -> None:
    """Rank 0: ``state`` (HF names) as a checkpoint directory of ``hf``'s architecture."""
    out.mkdir(parents=True, exist_ok=True)
    fresh = auto_cls.from_config(hf.config, dtype=next(iter(state.values())).dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"export to {out}: missing {missing}, unexpected {unexpected}")
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation_config = getattr(hf, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(out)
