"""The value model for GAE: the policy's backbone with a scalar head, under FSDP2."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel

from asyncrl.config import ShardingFields
from learner.batch import TrainBatch
from learner.fsdp.model import attention_kwargs, shard


class ValueModel(nn.Module):
    """``values[b, t]`` estimates the return from the state after token ``t`` (next-token grid)."""

    def __init__(self, path: Path, dtype: torch.dtype, attn: dict[str, str] | None = None) -> None:
        super().__init__()
        self.backbone = AutoModel.from_pretrained(path, dtype=dtype, **(attn or {}))
        self.head = nn.Linear(self.backbone.config.hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.head.weight)  # start from V = 0: advantages = returns at step 1
        nn.init.zeros_(self.head.bias)

    def forward(self, tb: TrainBatch) -> Tensor:
        hidden = self.backbone(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                               position_ids=tb.position_ids, use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1)[:, :-1].float().clone()  # [b, L-1], aligned with targets


def load_critic(path: Path, dtype: str, opts: ShardingFields | None = None) -> ValueModel:
    model = ValueModel(path, getattr(torch, dtype), attention_kwargs(opts))
    return shard(model, model.backbone.layers, opts)
