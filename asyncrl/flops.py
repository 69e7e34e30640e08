"""Model FLOPs of a step, by one written-down convention (what MFU and pipeline efficiency divide).

From the HF ``config.json`` of the policy (decoder-only transformers):

- ``N`` = non-embedding parameters (every decoder layer and the final norm), ``H`` = LM-head
  parameters (``vocab x hidden``, tied or not), ``d_attn`` = heads x head dim, ``L`` = layers.
- Attention scores and mixing of a causal sequence of ``S`` tokens, forward:
  ``2 * L * d_attn * S * (S + 1)`` (QK^T and AV, 2 FLOPs a multiply-add, each position attends
  to itself and those before it); backward is twice that.
- **Learner**, one forward + backward of a sample with ``P`` prompt and ``R`` response tokens:
  ``6 * N * (P + R) + 6 * H * R + 3 * attn(P + R)`` (the head runs on response positions only).
  A forward-only pass (reference, old log-probs, teacher, critic values) is a third of that; a
  critic update is ``6 * N * (P + R) + 3 * attn`` (its head is one value per token).
- **Generator**, one group of ``n`` samples sharing a prompt: the prompt is prefilled once
  (``2 * N * P + attn(P)``), each sample then decodes ``R_i`` tokens at ``2 * (N + H)`` each plus
  its attention over the prompt and what it wrote.

Embedding lookups, norms' elementwise work and the optimiser are not counted (as in PaLM's and
torchtitan's MFU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelFlops:
    non_embedding: int  # N
    head: int  # H
    layers: int  # L
    d_attn: int  # heads x head dim

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelFlops:
        """From an HF decoder config (Llama/Qwen/Mistral-style keys)."""
        d, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or d // heads)
        ffn = int(config.get("intermediate_size") or 4 * d)
        vocab = int(config["vocab_size"])
        attn_params = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d  # q, k, v, o
        mlp_params = 3 * d * ffn if config.get("hidden_act", "silu") in ("silu", "swiglu") else 2 * d * ffn
        per_layer = attn_params + mlp_params + 2 * d  # two norms
        return cls(non_embedding=layers * per_layer + d, head=vocab * d, layers=layers, d_attn=heads * head_dim)

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelFlops:
        return cls.from_config(json.loads((Path(model_dir) / "config.json").read_text()))

    def attention(self, tokens: int, context: int = 0) -> float:
        """Forward attention FLOPs of ``tokens`` new positions after ``context`` earlier ones."""
        S0, S1 = context, context + tokens
        attended = (S1 * (S1 + 1) - S0 * (S0 + 1)) / 2  # sum of positions' context lengths
        return 4.0 * self.layers * self.d_attn * attended

    def train_sample(self, prompt: int, response: int) -> float:
        """Forward + backward of one policy sample (the convention above)."""
        return 6.0 * self.non_embedding * (prompt + response) + 6.0 * self.head * response \
            + 3.0 * self.attention(prompt + response)

    def generate_group(self, prompt: int, responses: list[int]) -> float:
        """One group's generation: the prompt prefilled once, each response decoded after it."""
        prefill = 2.0 * self.non_embedding * prompt + self.attention(prompt)
        decode = sum(2.0 * (self.non_embedding + self.head) * r + self.attention(r, prompt) for r in responses)
        return prefill + decode


def learner_step_flops(m: ModelFlops, lengths: list[tuple[int, int]], *, epochs: int = 1, forward_passes: int = 0,
                       critic: bool = False) -> float:
    """A learner step over samples of ``(prompt, response)`` lengths: ``epochs`` policy updates,
    ``forward_passes`` forward-only passes (reference, old log-probs, teacher, critic values) and,
    with ``critic``, ``epochs`` critic updates."""
    train = sum(m.train_sample(p, r) for p, r in lengths)
    critic_update = sum(6.0 * m.non_embedding * (p + r) + 3.0 * m.attention(p + r) for p, r in lengths)
    return epochs * train + forward_passes * train / 3.0 + (epochs * critic_update if critic else 0.0)
