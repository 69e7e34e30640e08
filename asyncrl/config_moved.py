"""Keys that moved to a shared section, kept as deprecated aliases.

Keys that more than one role reads live in one shared section each (``[sampling]``,
``[weight_sync]``, ``[liveness]``); before that they sat in the section of one role and
the other roles read it there. A config (TOML file, ``--set``, or dict) that still uses the
old path keeps working: :func:`move_aliases` rewrites it to the new path with one warning
line naming both. Code that still reads the old attribute (``cfg.learner.sync_timeout_s``)
gets the new value through :func:`moved`, with a DeprecationWarning::

    data = {"rollout": {"n": 8}}
    move_aliases(data, "run.toml")   # logs: run.toml: rollout.n is deprecated: use sampling.n
    assert data == {"rollout": {}, "sampling": {"n": 8}}
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

log = logging.getLogger("asyncrl.config")

# old section.key -> new section.key
ALIASES: dict[str, str] = {
    "rollout.n": "sampling.n",
    "rollout.temperature": "sampling.temperature",
    "rollout.top_p": "sampling.top_p",
    "rollout.max_new_tokens": "sampling.max_new_tokens",
    "transport.weight_sync": "weight_sync.address",
    "transport.weight_sync_backend": "weight_sync.backend",
    "learner.bucket_mb": "weight_sync.bucket_mb",
    "learner.sync_timeout_s": "weight_sync.timeout_s",
    "rollout.heartbeat_s": "liveness.heartbeat_s",
    "rollout.learner_timeout_s": "liveness.learner_timeout_s",
    "learner.generator_timeout_s": "liveness.generator_timeout_s",
}


def alias_of(path: str, source: str = "--set") -> str:
    """The current path of a ``section.key`` (itself unless it is a deprecated alias); warns when it moved."""
    new = ALIASES.get(path)
    if new is None:
        return path
    log.warning("%s: %s is deprecated: use %s", source, path, new)
    return new


def move_aliases(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Rewrite deprecated keys of one config source (a TOML file, a dict) to their new paths, in place.

    One warning line per key; both the old and the new key in one source is an error naming both.
    """
    for old, new in ALIASES.items():
        section, key = old.split(".")
        if not isinstance(data.get(section), dict) or key not in data[section]:
            continue
        new_section, new_key = new.split(".")
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # a wrong type there is reported by validation, naming the section
        if new_key in target:
            raise ValueError(f"{source}: both {old} and {new} are set; {old} is a deprecated alias of {new}: "
                             f"keep only {new}")
        log.warning("%s: %s is deprecated: use %s", source, old, new)
        target[new_key] = data[section].pop(key)
    return data


class RootRef:
    """A section's back-reference to its root config, for :func:`moved`. Not part of the section's value:
    any two compare equal (comparing the roots would recurse)."""

    __slots__ = ("cfg",)

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootRef)

    __hash__ = None  # type: ignore[assignment]


def moved(old: str) -> property:
    """A read/write alias, on the section of ``old`` (``section.key``), for the key it moved to.

    The section must have a ``_root: RootRef`` (set by RunConfig after validation).
    """
    new = ALIASES[old]
    section, key = new.split(".")

    def get(self: Any) -> Any:
        warnings.warn(f"{old} is read by its deprecated name: read {new}", DeprecationWarning, stacklevel=2)
        return getattr(getattr(self._root.cfg, section), key)

    def set_(self: Any, value: Any) -> None:
        warnings.warn(f"{old} is set by its deprecated name: set {new}", DeprecationWarning, stacklevel=2)
        setattr(getattr(self._root.cfg, section), key, value)

    return property(get, set_, doc=f"Deprecated alias of {new}.")
