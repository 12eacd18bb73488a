"""The catalog: fills the registries with the built-ins, the installed plugins and a graph's plugin files.

The registries themselves (``kdgraph.registry``) know nothing of what fills them; this module is the
one place that imports the built-in nets, ops, losses and datasets and the plugins.

Plugins are your own nets, ops, losses and datasets, registered with the decorators kdgraph's
built-ins use:

    # fusion.py, next to the graph file
    from kdgraph import register_op

    @register_op("weighted_ensemble")
    class WeightedEnsemble(nn.Module): ...

    # graph.yaml
    plugins: [fusion.py]        # .py files (relative to the graph file) or importable module names

Installed packages are found through the ``kdgraph.plugins`` entry-point group, loaded once per
process by ``load_builtins()``:

    [project.entry-points."kdgraph.plugins"]
    my_ops = "my_package.kd_ops"          # a module (importing it registers), or a function to call

Loading is idempotent: a file is imported once per process, under a module name derived from its
resolved path, so validating and then running a graph imports its plugins once. A plugin that
fails to import is rolled back (what it registered is removed again) and reported in one line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .errors import Problem
from .registry import REGISTRIES

if TYPE_CHECKING:
    from .spec import Locator

ENTRY_POINT_GROUP = "kdgraph.plugins"
_log = logging.getLogger("kdgraph.plugins")
_entry_points_loaded = False
_shown: dict[str, str] = {}  # module name of a plugin file -> the file as the graph names it (for messages)


def load_builtins() -> None:
    """Import the built-in nets, ops, losses and datasets, then installed plugins, so their decorators run.

    Idempotent: the imports are cached by Python, the entry points are loaded once per process.
    """
    from . import datasets, losses, nets, ops  # noqa: F401  (importing them registers them)

    load_entry_point_plugins()  # the `kdgraph.plugins` entry-point group, once per process


class PluginError(Exception):
    """A plugin cannot be found or fails to import; the message names it and says why."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def is_file_plugin(name: str) -> bool:
    """``fusion.py`` and ``ops/fusion.py`` are files; ``my_package.kd_ops`` is a module name."""
    return name.endswith(".py") or "/" in name or os.sep in name


def file_module_name(path: Path) -> str:
    """The module name a plugin file is imported under: stable for its resolved path."""
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return f"kdgraph_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', resolved.stem)}_{digest}"


def load_plugin(name: str, base_dir: str | Path = ".") -> ModuleType:
    """Import one plugin (a .py file relative to ``base_dir``, or a module name); raise ``PluginError``."""
    load_builtins()  # built-ins first: a plugin reusing a built-in name is the plugin's error
    if is_file_plugin(name):
        return _load_file(name, Path(base_dir) / name)
    return _load_module(name, Path(base_dir))


def load_graph_plugins(names: list, base_dir: Path, locator: Locator) -> list[Problem]:
    """Load a graph file's ``plugins:``; each failure is a Problem located at ``plugins[i]``."""
    problems = []
    for i, name in enumerate(names if isinstance(names, list) else []):
        if not isinstance(name, str) or not name.strip():
            continue  # the schema reports it
        try:
            load_plugin(name, base_dir)
        except PluginError as e:
            problems.append(locator.problem(("plugins", i), str(e), e.hint))
    return problems


def load_entry_point_plugins() -> None:
    """Load the installed plugins of the ``kdgraph.plugins`` group, once; a broken one is a warning."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # before loading: a plugin that calls load_builtins() must not recurse
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            with _rolled_back_on_error(f"{ep.name} ({ep.value})", ep.module, None):
                obj = ep.load()
                if callable(obj) and not isinstance(obj, ModuleType):
                    obj()
        except PluginError as e:
            _log.warning("kdgraph: installed %s", e)


# ----------------------------------------------------------------------------- importing


def _load_file(name: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"plugin file {str(path)!r} does not exist", "plugin files are relative to the graph file")
    module_name = file_module_name(path)
    if module_name in sys.modules:
        return sys.modules[module_name]  # loaded before in this process (validate, then run)
    spec = importlib.util.spec_from_file_location(module_name, path.resolve())
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {name!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    _shown[module_name] = name
    with _rolled_back_on_error(name, module_name, path.resolve()):
        sys.modules[module_name] = module  # registered first, as import does: dataclasses and pickling look it up
        spec.loader.exec_module(module)
    return module


def _load_module(name: str, base_dir: Path) -> ModuleType:
    try:
        with _rolled_back_on_error(name, name, None):
            return importlib.import_module(name)
    except PluginError as e:
        cause = e.__cause__
        if isinstance(cause, ModuleNotFoundError) and cause.name and (name + ".").startswith(cause.name + "."):
            beside = base_dir / f"{name.replace('.', '/')}.py"
            hint = (
                f"a file next to the graph is named with its suffix: {name.replace('.', '/')}.py"
                if beside.is_file()
                else "install the package that provides it, or give a .py file relative to the graph file"
            )
            raise PluginError(f"plugin module {name!r} is not installed", hint) from None
        raise


@contextmanager
def _rolled_back_on_error(label: str, module_name: str, file: Path | None) -> Iterator[None]:
    """Run an import; on any error, unregister what the plugin's module registered and raise PluginError."""
    try:
        yield
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # a plugin's exit() or Ctrl-C stub is its failure too
        for registry in REGISTRIES.values():
            for entry in registry.entries():
                if entry.module == module_name or entry.module.startswith(module_name + "."):
                    registry.unregister(entry.name)
        if file is not None:
            sys.modules.pop(module_name, None)
        raise PluginError(f"plugin {label!r} failed to import: {_describe(e, file)}") from e


def _describe(e: BaseException, file: Path | None) -> str:
    """``Type: message (file:line)`` without a traceback; plugin module names shown as their files."""
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    for module_name, shown in _shown.items():
        text = text.replace(module_name, shown)
    if isinstance(e, SyntaxError) and e.lineno:
        return f"{type(e).__name__}: {e.msg} (line {e.lineno})"
    if file is not None:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == file]
        if frames:
            text += f" (line {frames[-1].lineno})"
    return text
