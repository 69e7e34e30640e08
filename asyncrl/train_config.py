"""Configs of the supervised trainers: ``asyncrl sft`` and ``asyncrl rm-train``.

They share the RL config's sections where the meaning is the same (``run``, ``model``,
``logging``) and add their own ``data`` and ``train`` sections. Loaded with the same
rules (``extends``, ``--set``, unknown keys are errors naming the key path)::

    cfg = load_config("configs/sft/tiny_sft.toml", schema=SFTConfig)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from asyncrl.config import LoggingSection, ModelSection, RunSection, ShardingFields, _Section


class TrainSection(ShardingFields):
    """Optimisation, batching and checkpoints of a supervised run."""

    epochs: int = Field(1, ge=1, description="Passes over the training set (run.max_steps caps steps too).")
    batch_size: int = Field(16, ge=1, description="Examples per optimiser step.")
    micro_batch_size: int = Field(8, ge=1, description="Max examples per forward/backward pass.")
    lr: float = Field(1e-5, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine decay ends at lr * this.")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, gt=0)
    autocast_bf16: bool = False
    eval_every: int = Field(0, ge=0, description="Evaluate on data.test every N steps (0: start and end only).")
    checkpoint_every: int = Field(0, ge=0, description="HF export every N steps (0: only the final one).")
    keep_checkpoints: int = Field(2, ge=1, description="Periodic exports kept (oldest removed).")


class SFTData(_Section):
    """Prompt/response parquet (or chat ``messages``); the loss covers response tokens only."""

    train: Path
    test: Path | None = None
    format: Literal["prompt_response", "messages"] = "prompt_response"
    prompt_key: str = Field("prompt", description="A string, or a list of chat messages (veRL RL schema).")
    response_key: str = "response"
    messages_key: str = Field("messages", description="List of {role, content}; loss on assistant turns.")
    system_prompt: str | None = None
    max_tokens: int = Field(1024, ge=2, description="Longer examples are dropped (counted).")


class _SupervisedConfig(_Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection
    train: TrainSection = Field(default_factory=TrainSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)


class SFTConfig(_SupervisedConfig):
    data: SFTData


class PreferenceData(_Section):
    """Pairwise preferences: a prompt, a preferred and a dispreferred response."""

    train: Path
    test: Path | None = None
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Held out from train when data.test is unset.")
    max_tokens: int = Field(1024, ge=2, description="Pairs with a longer side are dropped (counted).")


class RMConfig(_SupervisedConfig):
    data: PreferenceData

    @model_validator(mode="after")
    def _no_lora(self) -> RMConfig:
        if self.train.lora.enabled:
            raise ValueError("train.lora: asyncrl rm-train trains the whole reward model (LoRA is for the "
                             "policy: asyncrl sft and the RL learner); remove train.lora.rank")
        return self

