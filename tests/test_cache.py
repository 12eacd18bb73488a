"""The dependency cache: $KDGRAPH_CACHE or the user's cache folder; `kdgraph cache list|clear`."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgraph.cache import cache_root, write_meta
from kdgraph.cli import main


def test_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDGRAPH_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("KDGRAPH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "kdgraph"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "kdgraph"  # not the working directory


def test_clear_removes_only_what_kdgraph_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdgraph.manifest import Manifest

    root = cache_root()
    teacher = Manifest(root / "teacher-0123")  # what a trained dependency writes: through its manifest
    teacher.make_root()
    teacher.write_new(root / "teacher-0123" / "run.json", b"{}")
    teacher.write_atomic(root / "teacher-0123" / "final.pt", b"x" * 2048)
    write_meta("net-info.json", {"a": 1})
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("keep")
    (root / "keep.txt").write_text("keep")
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "teacher-0123" in out and "net-info.json" in out and "mine" not in out and "2 entries" in out
    assert main(["cache", "clear"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt", "mine"]
    assert (root / "mine" / "notes.txt").read_text() == "keep"


def test_teacher_output_stores_are_entries_and_other_files_there_stay(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from kdgraph.output_cache import OutputCache, PortLayout

    root = cache_root()
    OutputCache({"t.logits": PortLayout((3,), torch.float32)}, 4, 2, folder=root / "outputs" / "k1")  # train.cache
    (root / "outputs" / "notes").mkdir(parents=True)
    (root / "outputs" / "notes" / "mine.txt").write_text("keep")
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "teacher outputs" in out and "k1" in out and "notes" not in out and "1 entry" in out
    assert main(["cache", "clear"]) == 0
    assert [p.name for p in (root / "outputs").iterdir()] == ["notes"]
