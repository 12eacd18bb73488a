"""The layout's promises that a reader relies on: the CLI front imports no torch; the registry is a leaf."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_the_parser_imports_no_torch() -> None:
    """`kdgraph --help` builds the parser only: subcommands import the engine inside their handlers."""
    code = "import sys, kdgraph.cli; kdgraph.cli.build_parser(); print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_registry_imports_nothing_of_what_fills_it() -> None:
    tree = ast.parse((REPO / "kdgraph" / "registry.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert imported == {"errors"}  # the catalog fills it; nets, ops, losses and datasets register into it


def test_no_sibling_import_is_guarded() -> None:
    """A missing module of kdgraph is a bug to see, never a feature to switch off quietly."""
    guarded = []
    for path in sorted((REPO / "kdgraph").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
            ):
                relative = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.level]
                if relative:
                    guarded.append(f"{Path(path).relative_to(REPO)}:{node.lineno}")
    assert guarded == []
