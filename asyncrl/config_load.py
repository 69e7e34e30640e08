"""Reading a config: TOML files with ``extends``, ``--set`` overrides, readable validation errors.

Schema-agnostic (the RL run and the supervised trainers share it); deprecated keys move to
their new paths per file and per override when the caller asks (:mod:`asyncrl.config_moved`)::

    data = read_toml(Path("configs/tiny_cpu_gae.toml").resolve(), aliases=True)
    apply_override(data, "learner.lr=1e-4")
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from asyncrl.config_base import ConfigError
from asyncrl.config_moved import alias_of, move_aliases


def format_errors(err: ValidationError, source: str) -> str:
    """One line per error: ``SOURCE: key.path: message`` (an extra key is an ``unknown key``)."""
    lines = []
    for e in err.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], override: str, aliases: bool = True) -> None:
    """Apply ``section.key=value`` (value parsed as TOML, else taken as a string); a deprecated
    ``section.key`` (:data:`asyncrl.config_moved.ALIASES`) sets its new path, with a warning."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    parts = (alias_of(key.strip()) if aliases else key.strip()).split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {p} is not a section")
    node[parts[-1]] = _parse_value(value.strip())


def read_toml(path: Path, seen: tuple[Path, ...] = (), aliases: bool = False) -> dict[str, Any]:
    """A TOML file; ``extends = "base.toml"`` (relative to the file) is merged underneath. With
    ``aliases``, each file's deprecated keys move to their new paths before merging."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    base = data.pop("extends", None)
    if aliases:
        try:
            move_aliases(data, str(path))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected a file name")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: extends: cycle through {base_path}")
    return _merge(read_toml(base_path, seen + (base_path,), aliases), data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
