"""LoRA adapters on the learner's policy (PEFT): wrapping, the tensors a sync sends, exports.

One home for every place where an adapter-trained policy differs from a fully trained one:

- :func:`apply_lora` wraps the HF model with PEFT *before* FSDP2 shards it (so only the adapters,
  and ``modules_to_save``, require grad when FSDP2's parameter groups form);
- :func:`sync_items` is what a weight sync sends: adapter tensors under the names of PEFT's saved
  format (``...q_proj.lora_A.weight``, which vLLM's LoRA loader parses) and ``modules_to_save`` as
  full tensors under their HF names (the generators load those into the base model);
- :func:`adapter_config` is the adapter's ``adapter_config.json`` content (vLLM's PEFTHelper reads
  the same fields);
- :func:`merged_state` folds the adapters into the base weights (HF names) for a merged export;
- :class:`AdapterOff` is the reference policy: the same module with its adapters switched off.

    peft = apply_lora(hf_model, cfg.learner.lora, path)    # then shard(peft, base_model(peft).model.layers)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asyncrl.config import LoraSection

ADAPTER = "default"  # PEFT's adapter name; live parameter names carry it, saved names do not
_PREFIX = "base_model.model."
_ADAPTER_NAME = re.compile(rf"\.{ADAPTER}(?=\.|$)")


class LoraConfigError(ValueError):
    """``learner.lora`` (or ``train.lora``) cannot be applied to this model; names the key."""


def is_adapted(model: torch.nn.Module) -> bool:
    """True for a PEFT-wrapped policy."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if is_adapted(model) else model  # type: ignore[operator]


def apply_lora(model: torch.nn.Module, cfg: LoraSection, path: Path, key: str = "learner.lora") -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters as ``cfg`` says; raise :class:`LoraConfigError` naming ``key``."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()} | {n for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise LoraConfigError(f"{key}.target_modules: {missing} match no module of {path}")
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    shared = {"embed_tokens", "lm_head", "wte", "embed_in", "embed_out"}
    bad = [m for m in cfg.modules_to_save + cfg.target_modules if m.rsplit(".", 1)[-1] in shared]
    if bad:
        raise LoraConfigError(f"{key}: {bad}: adapters or full training of the embeddings / LM head are not "
                              f"supported{' (this model ties them)' if tied else ''}; target the projections "
                              f"and, in modules_to_save, layers such as 'norm'")
    unknown = [m for m in cfg.modules_to_save if m not in names]
    if unknown:
        raise LoraConfigError(f"{key}.modules_to_save: {unknown} match no module of {path}")
    gemm = sorted({n for n, m in model.named_modules() for want in cfg.modules_to_save
                   if (n == want or n.endswith("." + want)) and isinstance(m, torch.nn.Linear | torch.nn.Embedding)})
    if gemm:
        raise LoraConfigError(f"{key}.modules_to_save: {gemm[:3]} are linear/embedding layers; give them "
                              f"adapters (target_modules) instead (modules_to_save is for layers such as 'norm')")
    lc = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                    modules_to_save=list(cfg.modules_to_save) or None, bias="none", task_type="CAUSAL_LM")
    peft = get_peft_model(model, lc, adapter_name=ADAPTER)
    setattr(peft, "asyncrl_lora", cfg)  # noqa: B010 - read back by settings()
    trainable = {p.dtype for p in peft.parameters() if p.requires_grad}
    if len(trainable) > 1:  # FSDP2 wants one dtype per group: PEFT keeps modules_to_save in the base dtype
        for p in peft.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return peft


def settings(model: torch.nn.Module) -> LoraSection:
    """The ``[*.lora]`` section a policy was wrapped with."""
    return model.asyncrl_lora  # type: ignore[return-value]


def adapter_config(model: torch.nn.Module) -> dict[str, Any]:
    """JSON-able ``adapter_config.json`` of the policy's adapter (what PEFT and vLLM read)."""
    cfg = model.peft_config[ADAPTER].to_dict()  # type: ignore[index,union-attr]
    return json.loads(json.dumps(cfg, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def sync_items(state: dict[str, Tensor]) -> list[tuple[str, Tensor]]:
    """A PEFT policy's state → what a sync sends: adapter tensors (PEFT's saved names) and the
    full tensors of ``modules_to_save`` (HF names), in state-dict order."""
    out: list[tuple[str, Tensor]] = []
    for name, t in state.items():
        if ".lora_" in name:
            out.append((_ADAPTER_NAME.sub("", name), t))
        elif f".modules_to_save.{ADAPTER}." in name:
            out.append((name.removeprefix(_PREFIX).replace(f".modules_to_save.{ADAPTER}", ""), t))
    return out


def is_adapter_tensor(name: str) -> bool:
    """Of :func:`sync_items`' names: True for an adapter tensor, False for a full module's."""
    return ".lora_" in name


def merged_state(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """HF-named full weights with every adapter folded in: ``W + (alpha / r) B A`` (in fp32)."""
    scale = float(config["lora_alpha"]) / int(config["r"])
    merged: dict[str, Tensor] = {}
    lora: dict[str, dict[str, Tensor]] = {}
    for name, t in state.items():
        if ".lora_" in name:  # ...q_proj.lora_A.default.weight
            module, kind = name.split(".lora_")[0], name.split(".lora_")[1].split(".")[0]
            lora.setdefault(module, {})[kind] = t
        elif ".original_module." in name:
            continue
        else:
            hf = name.removeprefix(_PREFIX).replace(".base_layer", "").replace(f".modules_to_save.{ADAPTER}", "")
            merged[hf] = t
    for module, ab in lora.items():
        key = module.removeprefix(_PREFIX) + ".weight"
        w = merged[key]
        merged[key] = (w.float() + scale * (ab["B"].float() @ ab["A"].float())).to(w.dtype)
    return merged


def adapter_state(model: torch.nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """PEFT's saved adapter format (``adapter_model.safetensors``) from a gathered full state."""
    from peft import get_peft_model_state_dict

    return {k: v.contiguous() for k, v in get_peft_model_state_dict(model, state_dict=state).items()}


def save_adapter(model: torch.nn.Module, state: dict[str, Tensor], out: Path) -> Path:
    """Write a PEFT adapter directory (``PeftModel.from_pretrained`` and vLLM's ``LoRARequest`` load it)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model, state), str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(model), indent=2))
    return out


class AdapterOff:
    """The reference policy of a LoRA run: the policy module with its adapters switched off
    (``PeftModel.disable_adapter``), so no second copy of the base is held. Callable like a model."""

    def __init__(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    def __call__(self, **kwargs: Any) -> Any:
        with self.policy.disable_adapter():  # type: ignore[operator]
            return self.policy(**kwargs)
