"""The import paths of the modules that moved into job sub-packages (CHANGELOG.md, 0.3.0), kept for one release.

``import x2ctclip.train.evaluate_model`` (any old module path) still works and warns with a DeprecationWarning that
names the new module; so does an old name read from an old module that is now a package (``x2ctclip.train.data``,
``.synthetic``, ``.fewshot``, ``.hub``, ``.cli``). The old-to-new table is data, recorded by the move, in
``resources/moved_modules.json``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path

PREFIX = "x2ctclip.train."
MOVED: dict[str, dict] = json.loads((Path(__file__).resolve().parent / "resources" / "moved_modules.json").read_text())


def moved_attribute(old: str, name: str):
    """The object ``name`` of the old module ``x2ctclip.train.<old>``, read from its new module, with a warning."""
    entry = MOVED[old]
    new = entry["names"].get(name)
    if new is None:
        raise AttributeError(f"module 'x2ctclip.train.{old}' has no attribute {name!r}")
    warnings.warn(f"x2ctclip.train.{old}.{name} moved to x2ctclip.train.{new}.{name}; the old path goes in the next "
                  "release", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(PREFIX + new), name)


def package_getattr(package: str):
    """A module ``__getattr__`` for a package that replaced an old module of the same name."""
    old = package[len(PREFIX):]

    def __getattr__(name: str):
        return moved_attribute(old, name)
    return __getattr__


class _OldModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return moved_attribute(self.__name__[len(PREFIX):], name)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of old module paths (``x2ctclip.train.preprocess``...) with a forwarding module."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(PREFIX):] if fullname.startswith(PREFIX) else ""
        if old not in MOVED or MOVED[old].get("package"):
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return _OldModule(spec.name)

    def exec_module(self, module):
        new = MOVED[module.__name__[len(PREFIX):]]["default"]
        warnings.warn(f"{module.__name__} moved to {PREFIX}{new} (and its neighbours in that package); the old path "
                      "goes in the next release", DeprecationWarning, stacklevel=2)


def install() -> None:
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
