"""Environments by name: built-ins, ``package.module:Class`` or ``path/to/file.py:Class``.

:func:`load_environment` is called once at start (the launcher maps :class:`EnvironmentLoadError`
to exit 2) and checks what a user class must be before any episode runs: a class, a subclass of
:class:`envs.base.Environment`, with no abstract methods left, a constructor that takes no
arguments (the generator builds one object per episode with ``cls()``), and ``tools`` a list of
:class:`envs.base.Tool` with distinct names. Loading goes through :mod:`asyncrl.plugins`, so a file
is imported once per process and errors name the file and the classes defined there.
"""

from __future__ import annotations

import inspect

from asyncrl.plugins import PluginKind, load_plugin
from envs.base import Environment, Tool
from envs.builtin import ArithToolsEnv, CodeEnv


class EnvironmentLoadError(ValueError):
    """The environment spec cannot be used; the message names the spec and what is wrong."""


ENVIRONMENTS: dict[str, type[Environment]] = {"arith_tools": ArithToolsEnv, "code": CodeEnv}
_KIND = PluginKind("environment", "Class", "class", inspect.isclass, EnvironmentLoadError, local_only=True)


def load_environment(spec: str) -> type[Environment]:
    """The environment class ``spec`` names, checked as the module docstring says."""
    cls = load_plugin(spec, ENVIRONMENTS, _KIND)
    if not inspect.isclass(cls):
        raise EnvironmentLoadError(f"environment {spec!r} is not a class (it is a {type(cls).__name__})")
    if not issubclass(cls, Environment):
        bases = ", ".join(b.__name__ for b in cls.__mro__[1:-1]) or "object"
        raise EnvironmentLoadError(f"environment {spec!r}: class {cls.__name__} is not a subclass of "
                                   f"envs.base.Environment (its bases: {bases})")
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise EnvironmentLoadError(f"environment {spec!r}: class {cls.__name__} does not implement "
                                   f"{', '.join(abstract)}")
    _check_constructor(cls, spec)
    _check_tools(cls, spec)
    return cls


def _check_constructor(cls: type, spec: str) -> None:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no introspectable signature: trust it
        return
    try:
        signature.bind()
    except TypeError as exc:
        raise EnvironmentLoadError(
            f"environment {spec!r}: {cls.__name__}{signature} needs arguments ({exc}), but one object is built "
            f"per episode with {cls.__name__}(); take what the episode needs from reset(start)"
        ) from None


def _check_tools(cls: type[Environment], spec: str) -> None:
    tools = cls.tools
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Tool) for t in tools):
        raise EnvironmentLoadError(f"environment {spec!r}: {cls.__name__}.tools must be a list of envs.base.Tool, "
                                   f"got {tools!r:.120}")
    names = [t.name for t in tools]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EnvironmentLoadError(f"environment {spec!r}: {cls.__name__}.tools repeats the name(s) "
                                   f"{', '.join(repeated)}")
