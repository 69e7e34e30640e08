"""A run config as TOML text: only the keys that differ from the defaults, sections in schema order.

Enough TOML for what :class:`~asyncrl.config.RunConfig` holds (tables and sub-tables, strings, numbers,
booleans, lists, inline tables in lists such as ``[[data.val]]``); the text reads back into an equal config::

    text = config_toml(cfg)
    assert validate_config(tomllib.loads(text)) == cfg
"""

from __future__ import annotations

import json
import math
from typing import Any

from asyncrl.config import RunConfig
from cli.deploy.common import DeployError


def config_toml(cfg: RunConfig) -> str:
    blocks: list[str] = []
    for section, values in cfg.model_dump(mode="json", exclude_defaults=True).items():
        _table(section, values, blocks)
    return "\n\n".join(blocks) + "\n"


def _table(name: str, values: dict[str, Any], blocks: list[str]) -> None:
    """``[name]`` with its plain keys, then its sub-tables (``[learner.lora]``) after it."""
    lines = [f"{key} = {_value(v, f'{name}.{key}')}" for key, v in values.items()
             if v is not None and not isinstance(v, dict)]
    if lines:
        blocks.append("\n".join([f"[{name}]"] + lines))
    for key, v in values.items():
        if isinstance(v, dict):
            _table(f"{name}.{key}", v, blocks)


def _value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x, f"{key}[{i}]") for i, x in enumerate(v)) + "]"
    if isinstance(v, dict):  # an inline table: list entries such as data.val's sets
        return "{" + ", ".join(f"{k} = {_value(x, f'{key}.{k}')}" for k, x in v.items() if x is not None) + "}"
    raise DeployError(f"{key}: cannot be written as TOML ({type(v).__name__})")
