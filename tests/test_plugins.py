"""asyncrl.plugins: the one loader behind reward functions and environments (registry name,
``module:attr``, ``file.py:attr``), its per-process file cache and its error messages."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from asyncrl.plugins import PluginKind, is_path, load_plugin


class PluginError(ValueError):
    pass


FUNCTIONS = PluginKind("scorer", "function", "function", inspect.isfunction, PluginError)
CLASSES = PluginKind("widget", "Class", "class", inspect.isclass, PluginError, local_only=True)
PLUGIN_FILE = '''
from pathlib import Path

LOADS = []
LOADS.append(1)


def score(x):
    return x + 1


class Widget:
    pass
'''


def test_is_path() -> None:
    assert all(map(is_path, ["a.py", "dir/a", "~/a", "c:\\\\a"])) and not is_path("pkg.module")


def test_registry_module_and_file_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_plugin("one", {"one": 1}, FUNCTIONS) == 1
    assert load_plugin("asyncrl.plugins:is_path", {}, FUNCTIONS) is is_path
    path = tmp_path / "plugin_mod.py"
    path.write_text(PLUGIN_FILE)
    score = load_plugin(f"{path}:score", {}, FUNCTIONS)
    widget = load_plugin(f"{path}:Widget", {}, CLASSES)  # the same file for another kind: imported once
    assert score(1) == 2 and sys.modules[widget.__module__].LOADS == [1]
    monkeypatch.chdir(tmp_path)
    assert load_plugin("./plugin_mod.py:score", {}, FUNCTIONS) is score


def test_errors_name_the_spec_the_source_and_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "plugin_mod2.py"
    path.write_text(PLUGIN_FILE)
    with pytest.raises(PluginError, match=r"^unknown scorer 'x'; known: a, b, or 'package.module:function' or "
                                          r"'path/to/file.py:function'$"):
        load_plugin("x", {"b": 1, "a": 2}, FUNCTIONS)
    with pytest.raises(PluginError, match=rf"^widget '{path}:Nope': file {path} has no class 'Nope' "
                                          r"\(classes there: Widget\)$"):  # Path is imported there: not listed
        load_plugin(f"{path}:Nope", {}, CLASSES)
    with pytest.raises(PluginError, match=r"has no function 'nope' \(functions there: score\)"):
        load_plugin(f"{path}:nope", {}, FUNCTIONS)
    with pytest.raises(PluginError, match=r"^cannot load scorer 'no_such_pkg_x:f': ModuleNotFoundError"):
        load_plugin("no_such_pkg_x:f", {}, FUNCTIONS)
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('needs a GPU')\n")
    with pytest.raises(PluginError, match=f"importing {raising} raised RuntimeError: needs a GPU"):
        load_plugin(f"{raising}:f", {}, FUNCTIONS)
    assert not [m for m in sys.modules if m.startswith("asyncrl_user_raising_")]  # no half-imported module left
