"""docs/authoring.md: every file it shows is the file in docs/tutorial, and every command it gives runs.

The commands run in one process through ``kdgraph.cli.main``, the function behind the ``kdgraph``
executable, in a copy of docs/tutorial (one process also shows that validating, then running, a
graph loads its plugin once). tests/test_plugins.py runs a plugin graph in fresh processes.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
from pathlib import Path

import pytest

from kdgraph.catalog import load_builtins
from kdgraph.cli import build_parser, main
from kdgraph.registry import REGISTRIES

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "authoring.md"
TUTORIAL = REPO / "docs" / "tutorial"

# Subcommands the tutorial already uses but kdgraph does not have yet. Remove a name the day its
# command lands: the test fails until then if the list is wrong in either direction.
EXPECTED_MISSING: set[str] = set()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of every ``` block."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M)


def tutorial_commands() -> list[list[str]]:
    lines = [
        line.strip() for lang, body in fenced_blocks(DOC.read_text()) if lang == "bash" for line in body.splitlines()
    ]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def subcommands() -> set[str]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_every_tutorial_file_is_shown_verbatim() -> None:
    shown = [body for _, body in fenced_blocks(DOC.read_text())]
    files = sorted(p for p in TUTORIAL.iterdir() if p.is_file())
    assert files, "docs/tutorial is empty"
    for path in files:
        assert path.read_text() in shown, f"docs/authoring.md does not show docs/tutorial/{path.name} as it is"


@pytest.fixture
def registries_restored():
    """The tutorial's plugin op is unregistered afterwards."""
    load_builtins()
    before = {kind: set(r.names()) for kind, r in REGISTRIES.items()}
    yield
    for kind, registry in REGISTRIES.items():
        for name in set(registry.names()) - before[kind]:
            registry.unregister(name)


@pytest.mark.slow
def test_the_tutorial_commands_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, registries_restored: None
) -> None:
    commands = tutorial_commands()
    assert commands and all(c[0] == "kdgraph" for c in commands), "the tutorial's bash blocks hold kdgraph commands"
    missing = {c[1] for c in commands} - subcommands()
    assert missing == EXPECTED_MISSING, (
        f"the tutorial uses subcommands that do not exist: {sorted(missing)}; EXPECTED_MISSING in this test says "
        f"{sorted(EXPECTED_MISSING)} (remove a name once its subcommand exists)"
    )
    work = tmp_path / "tutorial"
    shutil.copytree(TUTORIAL, work)
    monkeypatch.chdir(work)
    for args in commands:
        if args[1] in EXPECTED_MISSING:
            continue
        status = main(args[1:])
        out, err = capsys.readouterr()
        assert status == 0, f"{shlex.join(args)} failed:\n{out}\n{err}"
        for flag in ("-o", "--out"):  # what a command says it writes exists
            if flag in args:
                assert (work / args[args.index(flag) + 1]).exists(), f"{shlex.join(args)} wrote nothing"
