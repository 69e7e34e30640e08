"""A tiny random-init Llama with a character-level tokenizer, built offline.

The model is shaped like SmolLM2 (``LlamaForCausalLM``, tied embeddings, ChatML chat
template) but small enough to train on CPU in seconds. The tokenizer has one token per
character: printable ASCII (space included) plus newline and tab, and the special tokens
``<pad>``, ``<unk>``, ``<|im_start|>``, ``<|im_end|>``. Decoding concatenates tokens, so
``decode(encode(s)) == s`` for any text made of those characters. Characters outside the
vocabulary encode to ``<unk>``.

vLLM's CPU attention kernels reject ``head_dim < 32``, so this module refuses such shapes.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, UNK, IM_START, IM_END = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, UNK, IM_START, IM_END)
CHARACTERS = "".join(chr(c) for c in range(32, 127)) + "\n\t"
MIN_HEAD_DIM = 32

# SmolLM2's ChatML template, minus its default system message (short prompts suit a
# tiny model): <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

assert set(string.printable) - set(CHARACTERS) == {"\r", "\x0b", "\x0c"}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Return the character-level ChatML tokenizer (no files, no downloads)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    # BPE with no merges and no pre-tokenizer splits text into single characters.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_tiny_model(
    out: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-init float32 ``LlamaForCausalLM`` and its tokenizer to ``out``.

    The same arguments and seed give the same weights. Returns ``out``.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim < MIN_HEAD_DIM:
        raise ValueError(
            f"head_dim = hidden_size/num_heads = {head_dim} < {MIN_HEAD_DIM}: vLLM's CPU attention "
            f"rejects it; raise hidden_size or lower num_heads"
        )
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_char_tokenizer()
    vocab = tok.get_vocab()  # added tokens included
    ids = {name: vocab[t] for name, t in (("bos", IM_START), ("eos", IM_END), ("pad", PAD))}
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float()  # float32 (.to(dtype) is mistyped by transformers' @wraps)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
