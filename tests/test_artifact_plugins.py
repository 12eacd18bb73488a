"""Artifacts never name code: a run folder, an export or a cache entry imports no plugin the user did not name again.

Every command that reads an artifact (draw RUN, export RUN, eval model.pt, load_exported, run --resume) is
tried with a run whose plugin file writes a sentinel when imported: without --plugins it is refused in one
line and the sentinel never appears; with the same file (matched by SHA-256) or --trust-plugins it works;
with another file it is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from kdgraph.cli import main
from kdgraph.registry import REGISTRIES

PLUGIN = '''\
"""Writes a sentinel when imported (the test's proof that code ran), and registers the op the graph uses."""
import os
from pathlib import Path

import torch
from torch import nn

from kdgraph import PortInfo, register_op

if os.environ.get("KDGRAPH_TEST_SENTINEL"):
    Path(os.environ["KDGRAPH_TEST_SENTINEL"]).write_text("imported")


@register_op("test_sentinel_scale")
class Scale(nn.Module):
    """Its input times a learnable scalar."""

    def __init__(self, start: float = 1.0, in_info: list | None = None):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(start)))
        self.info = in_info[0] if in_info else PortInfo()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale

    def port_info(self) -> dict:
        return {"out": self.info}
'''

GRAPH = """\
kdgraph: 1
name: sentinel_graph
plugins: [sentinel_op.py]
data: {dataset: synthetic, size: 16, test_size: 8, batch_size: 8}  # eval --data synthetic: the same shapes
nodes:
  student: {net: cnn, width: 4}
  scaled: {op: test_sentinel_scale, in: student.logits, start: 2.0}
edges:
  - {loss: ce, from: data.label, to: scaled.out}
train: {epochs: 1, progress: false, eval: [scaled.out]}
deploy: scaled.out
"""


def forget_plugins() -> None:
    """As in a fresh process: no plugin module imported, the plugin's op unregistered."""
    for name in [n for n in sys.modules if n.startswith("kdgraph_plugin_")]:
        del sys.modules[name]
    for registry in REGISTRIES.values():
        for entry in registry.entries():
            if entry.module.startswith("kdgraph_plugin_"):
                registry.unregister(entry.name)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project with the plugin, a finished run, its export and a paused run (each made once)."""
    forget_plugins()
    root = tmp_path_factory.mktemp("artifacts")
    project = root / "project"
    project.mkdir()
    (project / "sentinel_op.py").write_text(PLUGIN)
    (project / "graph.yaml").write_text(GRAPH)
    other = root / "other"
    other.mkdir()
    (other / "sentinel_op.py").write_text(PLUGIN + "# another file: another SHA-256\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDGRAPH_CACHE", str(root / "cache"))
        mp.delenv("KDGRAPH_TEST_SENTINEL", raising=False)
        assert main(["run", str(project / "graph.yaml"), "--out", str(root / "done"), "-q"]) == 0
        # named again (a kdgraph without the option, where these tests must fail for their own reason, imports it)
        again = (
            ["--plugins", str(project / "sentinel_op.py")] if importlib.util.find_spec("kdgraph.plugin_trust") else []
        )
        assert main(["export", str(root / "done"), "-o", str(root / "model.pt"), *again]) == 0
        assert main(["run", str(project / "graph.yaml"), "--out", str(root / "paused"), "-q", "--stop-after", "1"]) == 0
    forget_plugins()
    return {
        "plugin": project / "sentinel_op.py",
        "other": other / "sentinel_op.py",
        "graph": project / "graph.yaml",
        "done": root / "done",
        "model": root / "model.pt",
        "paused": root / "paused",
    }


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The file the plugin writes when imported; plugins forgotten before and after the test."""
    path = tmp_path / "SENTINEL"
    monkeypatch.setenv("KDGRAPH_TEST_SENTINEL", str(path))
    forget_plugins()
    yield path
    forget_plugins()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(kind: str, made: dict[str, Path], tmp_path: Path) -> list[str]:
    """The command line of each artifact reader (resume on a fresh copy of the paused run)."""
    if kind == "draw":
        return ["draw", str(made["done"]), "--format", "mmd"]
    if kind == "export":
        return ["export", str(made["done"]), "-o", str(tmp_path / "again.pt"), "--no-torchscript"]
    if kind == "eval":
        return ["eval", str(made["model"]), "--data", "synthetic"]
    if kind == "eval_run":
        return ["eval", str(made["done"])]
    copy = tmp_path / "paused"
    shutil.copytree(made["paused"], copy)
    return ["run", "--resume", str(copy), "-q"]


KINDS = ["draw", "export", "eval", "eval_run", "resume"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_artifact_naming_a_plugin_runs_no_code(kind, made, sentinel, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert main(command(kind, made, tmp_path)) == 2
    assert not sentinel.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"records plugin file sentinel_op.py (sha256 {sha(made['plugin'])})" in err[0]
    assert "--plugins path/to/sentinel_op.py" in err[0] and "--trust-plugins" in err[0]


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_plugin_file_named_again_works(kind, made, sentinel, tmp_path) -> None:
    assert main([*command(kind, made, tmp_path), "--plugins", str(made["plugin"])]) == 0
    assert sentinel.exists()  # the user's own file ran, as they asked


@pytest.mark.parametrize("kind", KINDS)
def test_another_file_is_refused(kind, made, sentinel, tmp_path, capsys) -> None:
    capsys.readouterr()
    assert main([*command(kind, made, tmp_path), "--plugins", str(made["other"])]) == 2
    assert not sentinel.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"no --plugins file matches it ({made['other']} has sha256 {sha(made['other'])})" in err[0]


@pytest.mark.parametrize("kind", KINDS)
def test_trust_plugins_imports_the_recorded_file(kind, made, sentinel, tmp_path) -> None:
    assert main([*command(kind, made, tmp_path), "--trust-plugins"]) == 0
    assert sentinel.exists()


def test_load_exported_names_the_file_and_hash_and_loads_from_anywhere(made, sentinel, tmp_path) -> None:
    from kdgraph.errors import KDGraphError
    from kdgraph.export import load_exported

    with pytest.raises(KDGraphError) as refused:
        load_exported(made["model"])
    assert not sentinel.exists()
    message = str(refused.value)
    assert f"records plugin file sentinel_op.py (sha256 {sha(made['plugin'])})" in message
    assert "plugins=['path/to/sentinel_op.py']" in message and "trust_plugins=True" in message
    with pytest.raises(KDGraphError, match="no plugins= file matches it"):
        load_exported(made["model"], plugins=[made["other"]])
    assert not sentinel.exists()
    elsewhere = tmp_path / "elsewhere" / "fusion_copy.py"  # the same bytes under another name and folder
    elsewhere.parent.mkdir()
    shutil.copy(made["plugin"], elsewhere)
    model = load_exported(made["model"], plugins=[elsewhere])
    assert sentinel.exists()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    forget_plugins()
    assert load_exported(made["model"], trust_plugins=True)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_the_sha256_is_recorded_in_the_run_and_the_export(made) -> None:
    recorded = {"name": "sentinel_op.py", "path": str(made["plugin"].resolve()), "sha256": sha(made["plugin"])}
    assert json.loads((made["done"] / "run.json").read_text())["plugins"] == [recorded]
    assert torch.load(made["done"] / "final.pt", weights_only=True)["plugins"] == [recorded]
    assert torch.load(made["model"], weights_only=True)["plugins"] == [recorded]


def test_resume_checks_the_runs_identity_before_importing(made, sentinel, tmp_path, capsys) -> None:
    run = tmp_path / "paused"
    shutil.copytree(made["paused"], run)
    changed = tmp_path / "graph.yaml"  # the graph file run.json names, changed since the run started
    changed.write_text(GRAPH.replace("start: 2.0", "start: 3.0"))
    shutil.copy(made["plugin"], tmp_path / "sentinel_op.py")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "source": str(changed)}))
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--trust-plugins"]) == 2
    assert not sentinel.exists()
    assert "was started from a different graph" in capsys.readouterr().err


def test_a_graph_file_names_its_own_plugins(made, sentinel, capsys) -> None:
    assert main(["draw", str(made["graph"]), "--format", "mmd", "--plugins", str(made["plugin"])]) == 2
    assert "a graph file names its plugins itself" in capsys.readouterr().err
    assert main(["draw", str(made["graph"]), "--format", "mmd"]) == 0  # named on the command line: imported
    assert sentinel.exists()


def test_a_cache_entry_trained_with_other_plugin_code_is_not_used(made, sentinel, tmp_path, capsys) -> None:
    from kdgraph.cache import cache_root
    from kdgraph.deps import entry_key
    from kdgraph.spec import load_spec

    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(GRAPH)
    shutil.copy(made["plugin"], tmp_path / "sentinel_op.py")
    parent = tmp_path / "parent.yaml"
    parent.write_text(
        GRAPH.replace("student: {net: cnn, width: 4}", "student: {net: cnn, width: 4, init: {from: teacher.yaml}}")
    )
    child = load_spec(teacher)
    entry = cache_root() / f"{child.name}-{entry_key(child, [])}"
    entry.mkdir(parents=True)
    (entry / "entry.json").write_text("{}")  # a finished entry: its plugins are checked before its record
    stale = {"name": "sentinel_op.py", "path": str((tmp_path / "sentinel_op.py").resolve()), "sha256": "0" * 64}
    (entry / "run.json").write_text(json.dumps({"plugins": [stale]}))
    torch.save({"graph": {}}, entry / "final.pt")
    capsys.readouterr()
    assert main(["run", str(parent), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with other plugin code" in err[0], err


def test_a_sweep_resumes_its_runs_with_the_plugins_its_graph_names(made, tmp_path) -> None:
    from kdgraph.sweep import make_sweep

    (job,) = make_sweep(str(made["graph"]), [], seeds=1).jobs
    (tmp_path / job.dir).mkdir(parents=True)
    (tmp_path / job.dir / "run.json").write_text("{}")  # a partial run: resumed
    argv = job.argv(tmp_path, str(made["graph"]))
    assert argv == ["run", "--resume", str(tmp_path / job.dir), "--plugins", str(made["plugin"])]


def test_a_trusted_file_whose_hash_changed_is_reported(made, sentinel, tmp_path, caplog) -> None:
    from kdgraph.export import load_exported

    record = torch.load(made["model"], weights_only=True)
    record["plugins"][0]["path"] = str(made["other"])  # the recorded path now holds other code
    moved = tmp_path / "moved.pt"
    torch.save(record, moved)
    with caplog.at_level("WARNING", logger="kdgraph.plugins"):
        load_exported(moved, trust_plugins=True)
    assert sentinel.exists()
    assert f"has SHA-256 {sha(made['other'])}" in caplog.text and f"recorded {sha(made['plugin'])}" in caplog.text


def test_an_edited_plugin_file_is_another_cache_entry(made, sentinel, tmp_path) -> None:
    """The dependency cache key holds each plugin file's SHA-256 (deps.entry_key): an edited plugin trains a
    new teacher entry instead of meeting the old entry's refusal."""
    from kdgraph.deps import entry_key
    from kdgraph.spec import load_spec

    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(GRAPH)
    plugin = tmp_path / "sentinel_op.py"
    shutil.copy(made["plugin"], plugin)
    before = entry_key(load_spec(teacher), [])
    forget_plugins()
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    after = entry_key(load_spec(teacher), [])
    forget_plugins()
    assert before != after
    assert entry_key(load_spec(teacher), []) == after  # the same files: the same key
