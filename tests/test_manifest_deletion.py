"""Deletion by manifest: kdgraph deletes, replaces and loads only files it recorded writing, still unchanged.

`kdgraph cache clear`, `run --force` and checkpoint rotation decide by the folder's manifest, never by
names; a run entry linked out of its folder is refused; a checkpoint whose bytes the manifest does not
list is never loaded; a folder from before manifests is named, never deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from kdgraph.cache import cache_root

from .conftest import MLP_RUN, cli

GRAPH = MLP_RUN.replace("name: hostile", "name: owned")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny nets: threads only add noise."""


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "owned.yaml"
    path.write_text(GRAPH)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (not following links) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_clear_leaves_a_users_folder_with_run_names_alone(capsys: pytest.CaptureFixture[str]) -> None:
    root = cache_root()
    mine = root / "experiment-7"  # a user's own folder that happens to hold a run's names
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "run.json").write_text("{}")
    (mine / "final.pt").write_bytes(b"weeks of training")
    (mine / "checkpoints" / "best.pt").write_bytes(b"more weeks")
    before = tree(mine)
    from kdgraph.cli import main

    assert main(["cache", "list"]) == 0
    assert "experiment-7" not in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert tree(mine) == before


def test_cache_clear_keeps_a_changed_file_and_a_pre_manifest_entry(capsys: pytest.CaptureFixture[str]) -> None:
    from kdgraph.cli import main
    from kdgraph.manifest import Manifest

    root = cache_root()
    entry = Manifest(root / "teacher-1")
    entry.make_root()
    entry.write_atomic(root / "teacher-1" / "final.pt", b"kdgraph's weights")
    entry.write_new(root / "teacher-1" / "run.json", b"{}")
    (root / "teacher-1" / "run.json").write_text('{"edited": true}')  # changed since kdgraph wrote it
    (root / "old-2").mkdir()
    (root / "old-2" / ".kdgraph-run").write_text('{"format": 1}')  # written before manifests
    (root / "old-2" / "final.pt").write_bytes(b"old")
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert f"kept {root / 'teacher-1' / 'run.json'}: changed since kdgraph wrote it" in out
    assert f"rm -r {root / 'old-2'}" in out
    assert not (root / "teacher-1" / "final.pt").exists()
    assert (root / "teacher-1" / "run.json").read_text() == '{"edited": true}'
    assert (root / "old-2" / "final.pt").read_bytes() == b"old"


def test_force_keeps_a_users_file_in_checkpoints_and_a_changed_checkpoint(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("run", str(graph), "--out", str(run), "--stop-after", "5")[0] == 0  # checkpoints at 4 and 5
    folder = run / "checkpoints"
    (folder / "notes.txt").write_text("mine")
    older = folder / json.loads((folder / "latest.json").read_text())["previous"]
    older.write_bytes(older.read_bytes() + b"edited")  # a file kdgraph wrote, modified by the user
    edited = older.read_bytes()
    code, out, err = cli("run", str(graph), "--out", str(run), "train.epochs=1", "--force")
    assert code == 0, err
    assert (folder / "notes.txt").read_text() == "mine" and older.read_bytes() == edited
    assert f"kept {older}: changed since kdgraph wrote it" in out
    assert (run / "final.pt").exists()


def test_force_stops_before_deleting_when_a_changed_file_is_in_the_way(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("run", str(graph), "--out", str(run), "--stop-after", "3")[0] == 0
    (run / "spec.yaml").write_text("my edits\n")
    before = tree(run)
    code, _, err = cli("run", str(graph), "--out", str(run), "--force")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"{run / 'spec.yaml'} is changed since kdgraph wrote it: the new run would write there")
    assert tree(run) == before


def test_force_refuses_a_run_folder_from_before_manifests(graph: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / ".kdgraph-run").write_text('{"format": 1}')
    (old / "checkpoints" / "latest.json").write_text("{}")
    before = tree(old)
    code, _, err = cli("run", str(graph), "--out", str(old), "--force")
    assert code == 2 and len(err.splitlines()) == 1
    assert "before kdgraph kept a manifest" in err and f"rm -r {old}" in err
    assert tree(old) == before


def test_resume_through_a_linked_checkpoints_folder_leaves_the_other_run_alone(graph: Path, tmp_path: Path) -> None:
    other, run = tmp_path / "other", tmp_path / "run"
    for folder in (other, run):
        assert cli("run", str(graph), "--out", str(folder), "--stop-after", "3")[0] == 0
    before = tree(other)
    for p in sorted((run / "checkpoints").iterdir()):
        p.unlink()
    (run / "checkpoints").rmdir()
    (run / "checkpoints").symlink_to(other / "checkpoints")
    code, _, err = cli("run", "--resume", str(run))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"{run / 'checkpoints'}: a symbolic link")
    assert tree(other) == before


def test_a_tampered_checkpoint_is_not_loaded(graph: Path, tmp_path: Path) -> None:
    """Weights changed and re-saved under a name and latest.json that match the new bytes: skipped."""
    from kdgraph.checkpoint_fallback import checkpoint_name

    run = tmp_path / "run"
    assert cli("run", str(graph), "--out", str(run), "--stop-after", "5")[0] == 0  # checkpoints at 4 and 5
    folder = run / "checkpoints"
    meta = json.loads((folder / "latest.json").read_text())
    state = torch.load(folder / meta["file"], weights_only=True)
    assert state["position"]["step"] == 5
    for t in state["graph"].values():
        if t.is_floating_point():
            t.fill_(0.5)
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    (folder / meta["file"]).unlink()
    name = checkpoint_name(5, blob)
    (folder / name).write_bytes(blob)
    meta.update(file=name, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (folder / "latest.json").write_text(json.dumps(meta))
    code, out, err = cli("run", "--resume", str(run))
    assert code == 0, err
    assert f"{name} (named by latest.json) is damaged" in out and "(step 4)" in out
    assert (folder / name).read_bytes() == blob  # not kdgraph's: not deleted either


def test_rotation_deletes_no_file_it_did_not_write(tmp_path: Path) -> None:
    from kdgraph.checkpoint import save_checkpoint

    folder = tmp_path / "checkpoints"
    first = save_checkpoint(folder, {"v": torch.zeros(1)}, 1)
    planted = folder / "step-000000000-0000000000000000.pt"  # named like an old checkpoint
    planted.write_bytes(b"mine")
    os.utime(planted, ns=(1, 1))
    for step in (2, 3):
        save_checkpoint(folder, {"v": torch.zeros(1) + step}, step)
    assert planted.read_bytes() == b"mine" and not first.exists()


def test_a_manifest_naming_a_path_outside_its_folder_deletes_nothing() -> None:
    from kdgraph.cli import main

    root = cache_root()
    (root / "teacher-3").mkdir(parents=True)
    (root / "victim.txt").write_text("mine")
    (root / "teacher-3" / "run.json").write_text("{}")
    record = {"by": "inode", "dev": 0, "ino": 0}
    forged = {"format": 1, "files": {"../victim.txt": record, "run.json": record}, "dirs": [], "root": True}
    (root / "teacher-3" / ".kdgraph-manifest.json").write_text(json.dumps(forged))
    assert main(["cache", "clear"]) == 0
    assert (root / "victim.txt").read_text() == "mine" and (root / "teacher-3" / "run.json").read_text() == "{}"
