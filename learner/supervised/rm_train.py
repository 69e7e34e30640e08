"""``asyncrl rm-train CONFIG``: a Bradley–Terry reward model on pairwise preferences.

The model is the base's HF sequence-classification variant with one output (a fresh
score head on the pretrained backbone). Each side of a pair is scored as the reward
worker scores a sample: the prompt with the chat template and generation prompt,
followed by the response text, value read at the last token. Loss
``-log sigmoid(r_chosen - r_rejected)`` averaged over pairs; pairwise accuracy on the
test split in the metrics. The export in ``<run>/checkpoints/final`` loads in a reward
worker of ``reward.type = "model"``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from asyncrl.data.format import DataError
from asyncrl.data.supervised import Preference, PreferenceSplits, check_preference_inputs
from asyncrl.train_config import RMConfig
from learner.batch import build_lm_batch
from learner.fsdp.model import attention_kwargs, decoder_layers, init_distributed, save_hf, shard
from learner.supervised.common import SupervisedRun, SupervisedTrainer, all_sum, train_to_end

log = logging.getLogger("learner.rm")

Pair = tuple[list[int], list[int]]  # chosen ids, rejected ids


class ScalarRM(nn.Module):
    """Wraps an HF ``*ForSequenceClassification`` so FSDP2's root unit holds its embeddings,
    final norm and score head, and scores packed or padded rows at each sequence's end."""

    hf: Any  # its class (per architecture) defines base_model and score; nn.Module's typing cannot see them

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor,
                rows: Tensor, ends: Tensor) -> Tensor:
        hidden = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, use_cache=False).last_hidden_state
        return self.hf.score(hidden[rows, ends]).squeeze(-1).float()


def load_reward_model(cfg: RMConfig) -> tuple[ScalarRM, Any]:
    init_distributed()
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    hf = AutoModelForSequenceClassification.from_pretrained(cfg.model.path, num_labels=1,
                                                            dtype=getattr(torch, cfg.model.learner_dtype),
                                                            **attention_kwargs(cfg.train))
    hf.config.pad_token_id = tok.pad_token_id  # the reward worker finds each row's end through it
    hf.config.use_cache = False
    rm = ScalarRM(hf)
    return shard(rm, decoder_layers(hf, cfg.model.path), cfg.train), tok


def encode_pairs(tok: Any, prefs: list[Preference], max_tokens: int) -> tuple[list[Pair], int]:
    out, dropped = [], 0
    for p in prefs:
        prompt = tok.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=False)
        sides = [tok(prompt + reply, add_special_tokens=False)["input_ids"] for reply in (p.chosen, p.rejected)]
        if max(len(s) for s in sides) > max_tokens:
            dropped += 1
            continue
        out.append((sides[0], sides[1]))
    return out, dropped


class RMTrainer(SupervisedTrainer):
    def __init__(self, cfg: RMConfig, inputs: PreferenceSplits | None = None) -> None:
        """``inputs``: the checked preference splits, if the caller already read them."""
        self.cfg = cfg
        cfg.run.dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.run.seed)
        d = cfg.data
        train_prefs, test_prefs = inputs or check_preference_inputs(cfg.model.path, d)
        self.model, self.tokenizer = load_reward_model(cfg)
        train, dropped = encode_pairs(self.tokenizer, train_prefs, d.max_tokens)
        test = encode_pairs(self.tokenizer, test_prefs, d.max_tokens)[0]
        if not d.test and d.test_fraction:
            random.Random(cfg.run.seed).shuffle(train)
            k = max(1, int(len(train) * d.test_fraction))
            test, train = train[:k], train[k:]
        if not train:
            raise DataError(f"{d.train}: no training pairs left (after dropping {dropped} longer than "
                            f"data.max_tokens={d.max_tokens} and holding out the test split)")
        self.train, self.test = train, test
        log.info("%d training pairs (%d dropped as too long), %d test pairs", len(train), dropped, len(test))
        self.run = SupervisedRun(cfg, self.model, len(train),
                                 progress={"loss": ("loss",), "acc": ("accuracy",), "val_acc": ("val_accuracy",)})

    def _scores(self, pairs: list[Pair]) -> Tensor:
        """``[n, 2]`` rewards of (chosen, rejected) for ``pairs`` (one forward)."""
        seqs = [s for pair in pairs for s in pair]
        t = self.cfg.train
        tb = build_lm_batch(seqs, [[0.0] * len(s) for s in seqs], self.tokenizer.pad_token_id, t.packing,
                            t.pack_row_tokens).to(self.run.device)
        ends = tb.offsets + tb.prompt_lens + tb.response_lens - 1
        with self.run.autocast():
            r = self.model(tb.input_ids, tb.attention_mask, tb.position_ids, tb.rows, ends)
        return r.view(-1, 2)

    def _pass(self, pairs: list[Pair], mbs: list[list[int]], scale: float) -> tuple[float, float, float, float]:
        """Sums of loss, correct pairs, pairs and margin over the micro-batches ``mbs``; backward
        if ``scale`` > 0. An empty micro-batch is a zero-weight pass on pair 0."""
        loss_sum = correct = n = margin_sum = 0.0
        for sel in mbs:
            weight = 1.0 if sel else 0.0
            sel = sel or [0]
            with torch.set_grad_enabled(scale > 0):
                r = self._scores([pairs[i] for i in sel])
                margin = r[:, 0] - r[:, 1]
                loss = -F.logsigmoid(margin).sum() * weight
            if scale > 0:
                (loss * scale).backward()
            loss_sum += float(loss.detach())
            correct += float((margin > 0).sum()) * weight
            margin_sum += float(margin.detach().sum()) * weight
            n += len(sel) * weight
        return loss_sum, correct, n, margin_sum

    def evaluate(self) -> dict[str, float]:
        if not self.test:
            return {}
        mbs = self.run.micro_batches(list(range(len(self.test))), [len(a) + len(b) for a, b in self.test])
        with torch.no_grad():
            loss, correct, n, margin = all_sum(list(self._pass(self.test, mbs, 0.0)))
        return {"val_loss": loss / n, "val_accuracy": correct / n, "val_margin": margin / n}

    def train_step(self, idx: list[int]) -> dict[str, Any]:
        run = self.run
        lengths = [len(a) + len(b) for a, b in self.train]
        loss, correct, n, margin = self._pass(self.train, run.micro_batches(idx, lengths), run.grad_scale / len(idx))
        stats = run.optimizer_step()
        loss, correct, n, margin = all_sum([loss, correct, n, margin])
        return {"loss": loss / n, "accuracy": correct / n, "margin": margin / n, "pairs": int(n), **stats}

    def export(self, out: Path) -> Path:
        return save_hf(self.model, self.tokenizer, out, auto_cls=AutoModelForSequenceClassification, prefix="hf.")


def main(cfg: RMConfig, inputs: PreferenceSplits | None = None) -> None:
    """Entry point of ``asyncrl rm-train CONFIG`` (``inputs``: from :func:`check_preference_inputs`)."""
    train_to_end(RMTrainer(cfg, inputs))
