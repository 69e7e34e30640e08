"""Reading SFT and preference parquet files into chat messages, with errors naming file,
row and column.

SFT rows are either ``prompt`` + ``response`` (the prompt a string or a list of chat
messages, as in veRL's RL files) or a ``messages`` list whose assistant turns are the
targets. Preference rows are ``prompt`` + ``chosen`` + ``rejected`` strings (the prompt
may be chat messages too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncrl.data.dataset import read_parquet, to_messages
from asyncrl.data.format import DataError, require_model_dir
from asyncrl.train_config import PreferenceData, SFTData

Messages = list[dict[str, str]]


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {type(value).__name__} {value!r:.80}")
    return value


def _prompt(value: Any, system: str | None, where: str) -> Messages:
    messages = to_messages(value, where)
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


def load_sft(path: Path, data: SFTData) -> list[Messages]:
    """One chat (ending in an assistant turn) per row."""
    if data.format == "messages":
        table = read_parquet(path, (data.messages_key,))
        out = []
        for i, value in enumerate(table.column(data.messages_key).to_pylist()):
            where = f"{path}: row {i}, column {data.messages_key!r}"
            msgs = _prompt(value, data.system_prompt, where)
            if not any(m["role"] == "assistant" for m in msgs):
                raise DataError(f"{where}: no assistant turn to learn from")
            out.append(msgs)
        return out
    table = read_parquet(path, (data.prompt_key, data.response_key))
    prompts = table.column(data.prompt_key).to_pylist()
    responses = table.column(data.response_key).to_pylist()
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        msgs = _prompt(p, data.system_prompt, f"{path}: row {i}, column {data.prompt_key!r}")
        reply = _string(r, f"{path}: row {i}, column {data.response_key!r}")
        out.append(msgs + [{"role": "assistant", "content": reply}])
    return out


@dataclass
class Preference:
    prompt: Messages
    chosen: str
    rejected: str


def load_preferences(path: Path, data: PreferenceData) -> list[Preference]:
    keys = (data.prompt_key, data.chosen_key, data.rejected_key)
    table = read_parquet(path, keys)
    cols = [table.column(k).to_pylist() for k in keys]
    out = []
    for i, (p, c, r) in enumerate(zip(*cols)):
        where = f"{path}: row {i}, column"
        out.append(Preference(_prompt(p, None, f"{where} {data.prompt_key!r}"),
                              _string(c, f"{where} {data.chosen_key!r}"), _string(r, f"{where} {data.rejected_key!r}")))
    return out


def _keyed(key: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None


SFTSplits = tuple[list[Messages], list[Messages] | None]
PreferenceSplits = tuple[list[Preference], list[Preference]]


def check_sft_inputs(model_path: Path, data: SFTData) -> SFTSplits:
    """The model directory and both SFT splits, checked before any model is loaded."""
    require_model_dir(model_path, "model.path")
    train = _keyed("data.train", load_sft, data.train, data)
    return train, _keyed("data.test", load_sft, data.test, data) if data.test else None


def check_preference_inputs(model_path: Path, data: PreferenceData) -> PreferenceSplits:
    """The model directory and both preference splits, checked before any model is loaded."""
    require_model_dir(model_path, "model.path")
    train = _keyed("data.train", load_preferences, data.train, data)
    return train, _keyed("data.test", load_preferences, data.test, data) if data.test else []
