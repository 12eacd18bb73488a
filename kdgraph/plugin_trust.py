"""Which plugin code an artifact may bring back: only files the user names again, checked by SHA-256.

A graph file's ``plugins:`` are imported because the user named that graph file. A run folder, an
exported model or a cache entry is data: the plugin files it records are imported only when the user
passes the same files again (``--plugins FILE ...``, ``load_exported(..., plugins=[...])``), matched by
their SHA-256, or says ``--trust-plugins`` (the recorded paths are imported; a differing hash is
reported). Anything else is refused in one line that names the recorded file, its hash and the fix.

    choice = PluginChoice(files=("ops/fusion.py",))
    with admitted(Admission("runs/kd/1", records, choice)):    # every plugin import in the block is gated
        spec = load_spec(source, overrides)

Records are what ``catalog.plugin_records`` writes: ``{"name": as the graph wrote it, "path": resolved
path, "sha256": hex}`` for a file, ``{"name": "pkg.mod", "module": true}`` for an importable module.
The gate itself sits in ``catalog.load_plugin``, the one door every plugin import goes through.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import is_file_plugin
from .errors import KDGraphError, RunError
from .files import PLUGIN, read_bytes

_log = logging.getLogger("kdgraph.plugins")


class PluginRefused(RunError):
    """An artifact names plugin code the user did not name again; the message says which and how to allow it."""


@dataclass(frozen=True)
class PluginChoice:
    """What the command line says about plugins an artifact records: the files named again, or trust."""

    files: tuple[str, ...] = ()  # --plugins FILE ... (a .py file, or an importable module name)
    trust: bool = False  # --trust-plugins: import the recorded paths (hashes still checked and reported)

    @property
    def given(self) -> bool:
        return bool(self.files) or self.trust


NO_PLUGINS = PluginChoice()  # nothing named again, nothing trusted: an artifact's plugins are refused


def add_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--plugins FILE ...`` and ``--trust-plugins`` for a command that reads `what` (a run, an export)."""
    parser.add_argument(
        "--plugins",
        nargs="+",
        default=[],
        metavar="FILE",
        help=f"plugin files that {what} records, named again (their SHA-256 must match the recorded one); "
        "kdgraph imports no code a run folder or export names",
    )
    parser.add_argument(
        "--trust-plugins",
        action="store_true",
        help=f"import the plugin files at the paths {what} records (a SHA-256 that differs is reported)",
    )


def choice_of(args: argparse.Namespace) -> PluginChoice:
    return PluginChoice(tuple(getattr(args, "plugins", None) or ()), bool(getattr(args, "trust_plugins", False)))


def refuse_for_graph_file(choice: PluginChoice) -> None:
    """--plugins/--trust-plugins are about artifacts; a graph file names its own plugins."""
    if choice.given:
        raise RunError(
            "--plugins and --trust-plugins apply to a run directory or an exported model; "
            "a graph file names its plugins itself (plugins: [file.py])"
        )


def file_sha256(path: Path) -> str:
    """SHA-256 of a plugin file, read through the bounded reader (a FIFO or a huge file is refused)."""
    return hashlib.sha256(read_bytes(path, PLUGIN)).hexdigest()


def legacy_records(names: Iterable[Any], base_dir: Path) -> list[dict[str, Any]]:
    """Records for an artifact written before hashes were recorded: names and paths only."""
    out: list[dict[str, Any]] = []
    for name in names or []:
        if not isinstance(name, str) or not name.strip():
            continue
        if is_file_plugin(name):
            out.append({"name": name, "path": str((base_dir / name).resolve()), "sha256": None})
        else:
            out.append({"name": name, "module": True})
    return out


def valid_records(records: Any, where: str) -> list[dict[str, Any]]:
    """The artifact's plugin records, checked for shape (a hand-made file is one clear line)."""
    if records is None:
        return []
    ok = isinstance(records, list) and all(
        isinstance(r, dict)
        and isinstance(r.get("name"), str)
        and (r.get("module") is True or (isinstance(r.get("path"), str) and isinstance(r.get("sha256"), str | None)))
        for r in records
    )
    if not ok:
        raise RunError(f"{where}: its plugin record is not what kdgraph writes (a list of name, path and sha256)")
    return records


class Admission:
    """The plugin imports an artifact may make: each recorded file mapped to a file the user named, or trusted.

    Built before anything is imported: the files given on the command line are hashed here, once.
    """

    def __init__(self, where: str, records: Sequence[dict[str, Any]], choice: PluginChoice, api: bool = False):
        self.where, self.choice, self.api = where, choice, api
        self.records = list(records)
        self.by_path = {r["path"]: r for r in self.records if not r.get("module")}
        self.given: dict[str, Path] = {}  # sha256 -> a file the user named
        self.given_names: dict[str, list[Path]] = {}
        self.given_modules: set[str] = set()
        for item in choice.files:
            if not is_file_plugin(str(item)):
                self.given_modules.add(str(item))
                continue
            path = Path(item)
            try:
                digest = file_sha256(path)
            except KDGraphError as e:
                raise RunError(f"{self._flag()} {item}: {e}") from None
            self.given[digest] = path
            self.given_names.setdefault(path.name, []).append(path)

    def _flag(self) -> str:
        return "plugins=" if self.api else "--plugins"

    def _fix(self, record: dict[str, Any]) -> str:
        shown = Path(record.get("path") or record["name"]).name
        if self.api:
            return f"pass it again: plugins=['path/to/{shown}'], or trust_plugins=True to import {record.get('path')}"
        return (
            f"pass the same file again: --plugins path/to/{shown} (its SHA-256 must match), "
            f"or --trust-plugins to import {record.get('path')} as recorded"
        )

    def file_for(self, name: str, path: Path) -> tuple[Path, str | None]:
        """The file to import for the plugin entry `name` at `path`, and the SHA-256 it must have (None: any)."""
        record = self.by_path.get(str(path.resolve())) or next(
            (r for r in self.records if r["name"] == name and not r.get("module")), None
        )
        recorded = record.get("sha256") if record else None
        if recorded and recorded in self.given:
            return self.given[recorded], recorded
        if not recorded:  # not recorded (an older artifact, a dependency's plugin): the same content, or the same name
            if path.is_file():
                try:
                    now = file_sha256(path)
                except KDGraphError:
                    now = None
                if now in self.given:
                    return self.given[now], now
            same_name = self.given_names.get(path.name, [])
            if len(same_name) == 1:
                return same_name[0], None
        if self.choice.trust:
            return path, recorded
        record = record or {"name": name, "path": str(path.resolve()), "sha256": None}
        raise PluginRefused(self._refusal(record))

    def module_for(self, name: str) -> None:
        """An importable module an artifact names: imported only when named again, or trusted."""
        if name in self.given_modules or self.choice.trust:
            return
        flag = "plugins=[...]" if self.api else "--plugins"
        raise PluginRefused(
            f"{self.where}: records plugin module {name!r}; kdgraph imports no code a run folder or export names "
            f"(name it again: {flag} {name}, or {'trust_plugins=True' if self.api else '--trust-plugins'})"
        )

    def mismatch(self, name: str, path: Path, digest: str, recorded: str) -> None:
        """A trusted file whose content changed since it was recorded: reported, imported (the user trusted it)."""
        _log.warning(
            "kdgraph: plugin %s at %s has SHA-256 %s; %s recorded %s (imported anyway: trusted)",
            name,
            path,
            digest,
            self.where,
            recorded,
        )

    def _refusal(self, record: dict[str, Any]) -> str:
        recorded = record.get("sha256")
        verb, what = ("records", f"sha256 {recorded}") if recorded else ("names", "no SHA-256 recorded")
        head = (
            f"{self.where}: {verb} plugin file {record['name']} ({what}); "
            "kdgraph imports no code a run folder or export names"
        )
        if self.given:
            named = ", ".join(f"{p} has sha256 {h}" for h, p in self.given.items())
            head += f"; no {self._flag()} file matches it ({named})"
        return f"{head} ({self._fix(record)})"


def run_records(run_dir: Path, names: Any, base_dir: Path) -> list[dict[str, Any]]:
    """The plugin records of a run folder: run.json's, else (a run of an older kdgraph) its spec's names."""
    from .files import RUN_FILE, read_json

    info = read_json(run_dir / "run.json", RUN_FILE, within=run_dir)
    if isinstance(info, dict) and "plugins" in info:
        return valid_records(info["plugins"], str(run_dir / "run.json"))
    return legacy_records(names, base_dir)


def same_plugins(folder: Path, records: list[dict[str, Any]]) -> None:
    """A cached result is used only when it was trained with the plugin files loaded now (same SHA-256)."""
    from .files import RUN_FILE, read_json

    if not records:
        return
    info = read_json(folder / "run.json", RUN_FILE, within=folder)
    then = valid_records(info.get("plugins") if isinstance(info, dict) else None, str(folder / "run.json"))
    if _identity(then) != _identity(records):
        now = ", ".join(f"{r['name']} sha256 {r.get('sha256')}" for r in records if not r.get("module"))
        raise PluginRefused(
            f"{folder}: this cached result was trained with other plugin code than the graph names now ({now}); "
            f"it is not used (delete {folder} to train it again with these plugins)"
        )


def _identity(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((r["name"], r.get("sha256") or "") for r in records)
