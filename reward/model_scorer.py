"""Reward-model scoring: an HF sequence-classification model (one logit) on prompt+response.

The prompt arrives as the policy's token ids (chat template applied); it is decoded with
the policy tokenizer and re-tokenized with the reward model's own tokenizer, so the two
models need not share a vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class ModelScorer:
    def __init__(self, model_path: Path, policy_path: Path, *, batch_size: int = 16,
                 max_tokens: int = 2048) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.policy_tokenizer = AutoTokenizer.from_pretrained(policy_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward.model_path: {model_path} has num_labels="
                             f"{self.model.config.num_labels}; a reward model needs exactly 1")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # HF finds each row's last real token through config.pad_token_id
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the response when too long
        self.batch_size, self.max_tokens = batch_size, max_tokens

    @torch.no_grad()
    def score(self, prompt_token_ids: list[list[int]], responses: list[str]) -> list[float]:
        """One scalar per (prompt, response) pair."""
        prompts = self.policy_tokenizer.batch_decode(prompt_token_ids, skip_special_tokens=False)
        texts = [p + r for p, r in zip(prompts, responses)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_tokens, add_special_tokens=False)
            out += self.model(**enc).logits[:, 0].float().tolist()
        return out
