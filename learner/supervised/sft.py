"""``asyncrl sft CONFIG``: supervised fine-tuning with the learner's FSDP2 machinery.

Each example is a chat; its tokens are the model's chat template applied to it, and the
loss (token-mean cross-entropy over the whole batch) covers assistant turns only. The
HF export in ``<run>/checkpoints/final`` is a policy any RL config can start from.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from asyncrl.data.format import DataError
from asyncrl.data.supervised import Messages, SFTSplits, check_sft_inputs
from asyncrl.train_config import SFTConfig
from learner.algo.logprobs import token_logprobs
from learner.batch import build_lm_batch
from learner.fsdp.model import load_policy, save_hf
from learner.supervised.common import SupervisedRun, SupervisedTrainer, all_sum, train_to_end

log = logging.getLogger("learner.sft")


def _ids(tokenizer: Any, messages: Messages, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if not isinstance(ids, list):  # transformers may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def encode_chat(tokenizer: Any, messages: Messages) -> tuple[list[int], list[float]]:
    """Token ids of the templated chat and a 0/1 mask marking assistant-turn tokens.

    Turn ``i``'s tokens are those between the templated prefix ``messages[:i]`` (with the
    generation prompt) and the templated ``messages[:i+1]``; the template must render a
    conversation's prefix as a token prefix (chat templates do).
    """
    ids = _ids(tokenizer, messages, False)
    mask = [0.0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], True)) if i else 0
        end_ids = _ids(tokenizer, messages[:i + 1], False)
        if end_ids != ids[:len(end_ids)]:
            raise DataError("the chat template does not render a conversation prefix as a token prefix; "
                            "per-turn loss masks cannot be computed")
        mask[start:len(end_ids)] = [1.0] * (len(end_ids) - start)
    return ids, mask


def encode_all(tokenizer: Any, chats: list[Messages], max_tokens: int, source: Path) -> tuple[list, list, int]:
    seqs, masks, dropped = [], [], 0
    for chat in chats:
        ids, mask = encode_chat(tokenizer, chat)
        if len(ids) > max_tokens:
            dropped += 1
            continue
        seqs.append(ids)
        masks.append(mask)
    if not seqs:
        raise DataError(f"{source}: every example is longer than data.max_tokens={max_tokens}")
    return seqs, masks, dropped


class SFTTrainer(SupervisedTrainer):
    def __init__(self, cfg: SFTConfig, inputs: SFTSplits | None = None) -> None:
        """``inputs``: the checked SFT splits, if the caller already read them."""
        self.cfg = cfg
        cfg.run.dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.run.seed)
        d = cfg.data
        train, test = inputs or check_sft_inputs(cfg.model.path, d)
        self.model, self.tokenizer = load_policy(cfg.model.path, cfg.model.learner_dtype, cfg.train,
                                                 lora=cfg.train.lora, lora_key="train.lora")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.train = encode_all(self.tokenizer, train, d.max_tokens, d.train)
        self.test = encode_all(self.tokenizer, test, d.max_tokens, d.test) if test and d.test else None
        log.info("%d training examples (%d dropped as longer than %d tokens)%s", len(self.train[0]),
                 self.train[2], d.max_tokens, f", {len(self.test[0])} test" if self.test else "")
        self.run = SupervisedRun(cfg, self.model, len(self.train[0]),
                                 progress={"loss": ("loss",), "lr": ("lr",), "tokens/s": ("tokens_per_s",)})

    def _loss_sums(self, seqs: list, masks: list, mbs: list[list[int]], scale: float) -> tuple[float, float, int]:
        """Sum of target NLL and target count over the micro-batches ``mbs``; backward with
        ``scale`` if > 0. An empty micro-batch is a zero-weight pass on example 0."""
        t, run = self.cfg.train, self.run
        nll_sum = n_tgt = computed = 0.0
        for sel in mbs:
            weight = 1.0 if sel else 0.0
            sel = sel or [0]
            tb = build_lm_batch([seqs[i] for i in sel], [masks[i] for i in sel], self.pad_id, t.packing,
                                t.pack_row_tokens)
            tb = tb.to(run.device)
            with torch.set_grad_enabled(scale > 0), run.autocast():
                logits = self.model(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                                    position_ids=tb.position_ids, use_cache=False).logits[:, :-1]
                nll = -(token_logprobs(logits, tb.targets) * tb.response_mask).sum() * weight
            if scale > 0:
                (nll * scale).backward()
            nll_sum += float(nll.detach())
            n_tgt += float(tb.response_mask.sum()) * weight
            computed += tb.num_tokens * weight
        return nll_sum, n_tgt, int(computed)

    def evaluate(self) -> dict[str, float]:
        if self.test is None:
            return {}
        seqs, masks, _ = self.test
        mbs = self.run.micro_batches(list(range(len(seqs))), [len(s) for s in seqs])
        nll, n, _ = all_sum(list(self._loss_sums(seqs, masks, mbs, 0.0)))
        return {"val_loss": nll / max(n, 1.0)}

    def train_step(self, idx: list[int]) -> dict[str, Any]:
        run, (seqs, masks, _) = self.run, self.train
        t0 = time.perf_counter()
        total = sum(sum(masks[i][1:]) for i in idx)  # global target count: the token-mean denominator
        mbs = run.micro_batches(idx, [len(s) for s in seqs])
        nll, n, computed = self._loss_sums(seqs, masks, mbs, run.grad_scale / max(total, 1.0))
        stats = run.optimizer_step()
        nll, n, all_computed = all_sum([nll, n, computed])
        dt = time.perf_counter() - t0
        return {"loss": nll / max(n, 1.0), "examples": len(idx), "target_tokens": int(n),
                "computed_tokens": int(all_computed), "tokens_per_s": all_computed / max(dt, 1e-9), **stats}

    def export(self, out: Path) -> Path:
        return save_hf(self.model, self.tokenizer, out)


def main(cfg: SFTConfig, inputs: SFTSplits | None = None) -> None:
    """Entry point of ``asyncrl sft CONFIG`` (``inputs``: from :func:`check_sft_inputs`)."""
    train_to_end(SFTTrainer(cfg, inputs))
