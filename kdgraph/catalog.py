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

A plugin file is read once (bounded), hashed, and exactly those bytes run: nothing else is put on
``sys.path`` and no bytecode is written beside it. ``plugin_records`` gives each file's SHA-256 for the
run folder, ``final.pt``, exports and cache entries. Plugins an artifact records go through
``admitted(...)`` (kdgraph/plugin_trust.py): inside it, ``load_plugin`` imports only what the user
named again, so a run folder or an exported model never runs code of its own choosing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import KDGraphError, Problem
from .files import PLUGIN, read_bytes
from .registry import REGISTRIES

if TYPE_CHECKING:
    from .plugin_trust import Admission
    from .spec import Locator

ENTRY_POINT_GROUP = "kdgraph.plugins"
_log = logging.getLogger("kdgraph.plugins")
_entry_points_loaded = False
_shown: dict[str, str] = {}  # module name of a plugin file -> the file as the graph names it (for messages)
_module_sha: dict[str, str] = {}  # module name of a plugin file -> SHA-256 of the bytes it ran
_entry_sha: dict[str, str] = {}  # resolved path a graph names -> SHA-256 of what was imported for it
_admission: ContextVar[Admission | None] = ContextVar("kdgraph_plugin_admission", default=None)


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


@contextmanager
def admitted(admission: Admission) -> Iterator[None]:
    """Within the block, every plugin import is one the admission allows (an artifact's plugins)."""
    token = _admission.set(admission)
    try:
        yield
    finally:
        _admission.reset(token)


def gated() -> bool:
    """Whether plugin imports are gated now (an artifact is being read)."""
    return _admission.get() is not None


def load_plugin(name: str, base_dir: str | Path = ".") -> ModuleType:
    """Import one plugin (a .py file relative to ``base_dir``, or a module name); raise ``PluginError``.

    Inside ``admitted(...)`` the admission decides first (PluginRefused, before any import).
    """
    load_builtins()  # built-ins first: a plugin reusing a built-in name is the plugin's error
    gate = _admission.get()
    if is_file_plugin(name):
        entry = Path(base_dir) / name
        if gate is None:
            return _load_file(name, entry, entry)
        path, expected = gate.file_for(name, entry)
        return _load_file(name, path, entry, expected, gate)
    if gate is not None:
        gate.module_for(name)
    return _load_module(name, Path(base_dir))


def imported_sha256(path: str | Path) -> str | None:
    """SHA-256 of what was imported for the plugin file a graph names at `path` (None: not imported)."""
    return _entry_sha.get(str(Path(path).resolve()))


def plugin_records(names: Any, base_dir: Path) -> list[dict[str, Any]]:
    """What an artifact records of a graph's ``plugins:``: name as written, resolved path, SHA-256 of what ran."""
    out: list[dict[str, Any]] = []
    for name in names if isinstance(names, list) else []:
        if not isinstance(name, str) or not name.strip():
            continue
        if not is_file_plugin(name):
            out.append({"name": name, "module": True})
            continue
        path = (base_dir / name).resolve()
        digest = imported_sha256(path)
        if digest is None:  # not imported in this process (a spec loaded as data): the file as it is now
            try:
                digest = hashlib.sha256(read_bytes(path, PLUGIN)).hexdigest()
            except KDGraphError:
                digest = None
        out.append({"name": name, "path": str(path), "sha256": digest})
    return out


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


class _VerifiedSource(importlib.abc.SourceLoader):
    """Serves the bytes that were read and hashed: what runs is what was checked (and no .pyc is written)."""

    def __init__(self, path: Path, source: bytes):
        self.path, self.source = str(path), source

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self.source


def _load_file(
    name: str, path: Path, entry: Path, expected: str | None = None, gate: Admission | None = None
) -> ModuleType:
    """Import the plugin file `path` for the graph's entry `entry` (the same file unless an admission maps it)."""
    if not path.is_file():
        raise PluginError(f"plugin file {str(path)!r} does not exist", "plugin files are relative to the graph file")
    try:
        source = read_bytes(path, PLUGIN)
    except KDGraphError as e:
        raise PluginError(str(e)) from None
    digest = hashlib.sha256(source).hexdigest()
    if expected and digest != expected and gate is not None:
        gate.mismatch(name, path, digest, expected)
    module_name = file_module_name(path)
    if gate is not None and path != entry:  # the user's copy of a file this process already ran: the same module
        module_name = next((m for m, sha in _module_sha.items() if sha == digest and m in sys.modules), module_name)
    if module_name in sys.modules:  # loaded before in this process (validate, then run)
        _entry_sha[str(entry.resolve())] = _module_sha.get(module_name, digest)
        return sys.modules[module_name]
    resolved = path.resolve()
    loader = _VerifiedSource(resolved, source)
    spec = importlib.util.spec_from_file_location(module_name, resolved, loader=loader)
    if spec is None:
        raise PluginError(f"plugin {name!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    _shown[module_name] = name
    with _rolled_back_on_error(name, module_name, resolved):
        sys.modules[module_name] = module  # registered first, as import does: dataclasses and pickling look it up
        loader.exec_module(module)
    _module_sha[module_name] = _entry_sha[str(entry.resolve())] = digest
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
