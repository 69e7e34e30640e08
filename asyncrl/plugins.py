"""One loader for user code named in a config: a registry name, ``package.module:attr`` or
``path/to/file.py:attr``.

Reward functions (:mod:`reward.functions`) and environments (:mod:`envs.registry`) both take such
specs, so they share this loader and its error messages: each names the spec, the module or file,
and what is defined there when the attribute is missing. A file is imported once per process
(relative paths from the working directory) under a private module name, whichever kind of plugin
asked for it first. What the attribute must be (a function of four arguments, an
:class:`envs.base.Environment` subclass) is checked by the caller.

    kind = PluginKind("reward function", "function", "function", inspect.isfunction, UnknownRewardError)
    fn = load_plugin("my_rewards.py:exact", REWARD_FUNCTIONS, kind)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PluginKind:
    """What is being loaded, for the error messages.

    ``label`` ("reward function") starts every message; ``placeholder`` is the attribute in the
    usage hint (``'package.module:function'``); ``noun`` names what a module lacks ("has no function
    'x'"); ``defines`` picks the module attributes listed as "functions there" (with ``local_only``,
    only those the module itself defines, not what it imported); ``error`` is the exception type
    raised (a caller's own, so its users can catch it).
    """

    label: str
    placeholder: str
    noun: str
    defines: Callable[[Any], bool]
    error: type[Exception]
    local_only: bool = False


def is_path(source: str) -> bool:
    """Whether the part before ``:`` names a file rather than a module."""
    return source.endswith(".py") or "/" in source or "\\" in source or source.startswith("~")


def load_plugin(spec: str, registry: Mapping[str, T], kind: PluginKind) -> Any:
    """``registry[spec]``, else the attribute a ``module:attr`` / ``file.py:attr`` spec names.

    Raises ``kind.error`` for an unknown name, a module or file that cannot be imported, or a
    missing attribute; the attribute itself is returned unchecked.
    """
    if spec in registry:
        return registry[spec]
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise kind.error(
            f"unknown {kind.label} {spec!r}; known: {', '.join(sorted(registry))}, or "
            f"'package.module:{kind.placeholder}' or 'path/to/file.py:{kind.placeholder}'"
        )
    module, where = load_module(source, spec, kind)
    value = getattr(module, attr, None)
    if value is None:
        defined = sorted(k for k, v in vars(module).items() if kind.defines(v) and not k.startswith("_")
                         and (not kind.local_only or getattr(v, "__module__", None) == module.__name__))
        raise kind.error(
            f"{kind.label} {spec!r}: {where} has no {kind.noun} {attr!r} "
            f"({kind.noun}{'es' if kind.noun.endswith('s') else 's'} there: {', '.join(defined) or 'none'})"
        )
    return value


def load_module(source: str, spec: str, kind: PluginKind) -> tuple[ModuleType, str]:
    """The module ``source`` names (a dotted module or a file path) and a phrase naming it."""
    if is_path(source):
        return load_file(source, spec, kind), f"file {source}"
    try:
        module = importlib.import_module(source)
    except Exception as exc:  # ImportError, or whatever the module raises on import
        raise kind.error(f"cannot load {kind.label} {spec!r}: {type(exc).__name__}: {exc}") from exc
    return module, f"module {source}"


_FILE_MODULES: dict[Path, ModuleType] = {}


def load_file(source: str, spec: str, kind: PluginKind) -> ModuleType:
    """Import a Python file by path (relative paths from the working directory), once per process."""
    path = Path(source).expanduser().resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        raise kind.error(f"{kind.label} {spec!r}: file not found: {path}")
    module_name = f"asyncrl_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise kind.error(f"{kind.label} {spec!r}: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up by module name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a syntax error or anything the file raises on import
        del sys.modules[module_name]
        raise kind.error(f"{kind.label} {spec!r}: importing {path} raised {type(exc).__name__}: {exc}") from exc
    _FILE_MODULES[path] = module
    return module
