"""The one loader of plugins named in recipes and suites (rewards, judges, scorers, checkers,
filters): `package.module:attribute`, or `path/to/file.py:attribute` read from `base_dir`, else
the working directory, with its folder appended to `sys.path` so it can import its neighbours."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from forgeml.core.errors import ConfigError

_FORMS = "write package.module:function or path/to/file.py:function"


def _is_file_spec(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _file_module(module: str, spec: str, base_dir: Path | None) -> ModuleType:
    path = Path(module).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(
            f"plugin '{spec}': file not found: {path}",
            hint="a relative file path is read from the working directory: run from the folder "
            "it is relative to (for the demo recipes, the repository root) or write it absolute",
        )
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)  # last: the file's neighbours never shadow an installed module
    try:
        loaded = importlib.import_module(path.stem)
    except ImportError as exc:
        raise ConfigError(f"cannot import {path} for '{spec}': {exc}") from None
    if Path(loaded.__file__ or "").resolve() != path:
        raise ConfigError(
            f"plugin '{spec}': the module name '{path.stem}' is already taken by {loaded.__file__}",
            hint="rename the plugin file",
        )
    return loaded


def plugin_module(spec: str, base_dir: Path | None = None) -> ModuleType:
    """The module a plugin spec names (imported, or loaded from its file)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"'{spec}' is not an import path", hint=_FORMS)
    if _is_file_spec(module):
        return _file_module(module, spec, base_dir)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module} for '{spec}': {exc}") from None


def load_plugin(spec: str, base_dir: Path | None = None) -> object:
    """`package.module:attribute` or `path/to/file.py:attribute` -> the attribute."""
    module = plugin_module(spec, base_dir)
    attr = spec.partition(":")[2]
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{module.__name__} has no attribute '{attr}' (from '{spec}')") from None
