"""Plugins: files next to a graph, module names, the entry-point group; failures as clean problems."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdgraph import catalog
from kdgraph.catalog import load_builtins
from kdgraph.check import dry_run
from kdgraph.errors import SpecError
from kdgraph.graph import DataInfo
from kdgraph.registry import LOSSES, OPS
from kdgraph.spec import load_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "plugins"
REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("clean_registries")


def graph_with(tmp_path: Path, plugin_list: str, *files: str) -> Path:
    """A copy of the fixture graph in tmp_path with another `plugins:` line, and the named fixture files."""
    for f in files:
        shutil.copy(FIXTURES / f, tmp_path / f)
    text = (FIXTURES / "graph.yaml").read_text().replace("plugins: [scale_op.py]", f"plugins: {plugin_list}")
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    return path


def one_problem(path: Path):
    with pytest.raises(SpecError) as err:
        load_spec(path)
    plugin_problems = [p for p in err.value.problems if p.path.startswith("plugins")]
    assert len(plugin_problems) == 1, err.value.lines()
    return plugin_problems[0]


def test_a_plugin_file_next_to_the_graph_adds_the_op_it_uses() -> None:
    spec = load_spec(FIXTURES / "graph.yaml")
    assert "test_scale" in OPS and OPS.get("test_scale").obj.__module__.startswith("kdgraph_plugin_scale_op_")
    graph = dry_run(spec, DataInfo(num_classes=10, channels=1, image_size=8))
    assert graph.nodes["scaled"].scale.item() == 2.0


def test_loading_the_same_plugin_twice_is_idempotent() -> None:
    load_spec(FIXTURES / "graph.yaml")  # validate ...
    load_spec(FIXTURES / "graph.yaml")  # ... then run, in the same process
    first = catalog.load_plugin("scale_op.py", FIXTURES)
    assert catalog.load_plugin(str(FIXTURES / "scale_op.py")) is first  # another spelling of the same file
    assert first.__name__ == catalog.file_module_name(FIXTURES / "scale_op.py")


def test_a_plugin_that_fails_to_import_is_one_located_line_and_rolled_back(tmp_path: Path) -> None:
    problem = one_problem(graph_with(tmp_path, "[scale_op.py, broken.py]", "scale_op.py", "broken.py"))
    assert problem.path == "plugins[1]" and problem.line == 4 and problem.file.endswith("graph.yaml")
    assert problem.message == "plugin 'broken.py' failed to import: KeyError: 'depth' (line 8)"
    assert "Traceback" not in problem.format()
    assert "test_half_registered" not in OPS  # what it registered before failing is removed again
    assert "test_scale" in OPS  # the good plugin beside it is loaded


def test_a_syntax_error_names_the_plugin_and_its_line(tmp_path: Path) -> None:
    (tmp_path / "syntax_error.py").write_text('"""Line 3 is wrong."""\n\ndef broken(:\n    pass\n')
    problem = one_problem(graph_with(tmp_path, "[syntax_error.py]"))
    assert problem.message.startswith("plugin 'syntax_error.py' failed to import: SyntaxError: ")
    assert problem.message.endswith("(line 3)")


def test_a_name_registered_twice_names_both_modules(tmp_path: Path) -> None:
    problem = one_problem(graph_with(tmp_path, "[dup_builtin.py]", "dup_builtin.py"))
    assert "op 'mix' is registered twice: by kdgraph.ops.logits and by dup_builtin.py" in problem.message
    assert OPS.get("mix").module == "kdgraph.ops.logits"


def test_two_plugins_registering_one_name_name_both_files(tmp_path: Path) -> None:
    problem = one_problem(graph_with(tmp_path, "[twin_a.py, twin_b.py]", "twin_a.py", "twin_b.py"))
    assert problem.path == "plugins[1]"
    assert "loss 'test_twin' is registered twice: by twin_a.py and by twin_b.py" in problem.message
    assert LOSSES.get("test_twin").description == "The first definition."


def test_a_missing_plugin_file_and_a_module_that_is_not_installed(tmp_path: Path) -> None:
    problem = one_problem(graph_with(tmp_path, "[nowhere.py]"))
    assert "plugin file" in problem.message and "nowhere.py" in problem.message and "does not exist" in problem.message
    shutil.copy(FIXTURES / "scale_op.py", tmp_path / "scale_op.py")
    problem = one_problem(graph_with(tmp_path, "[scale_op]"))
    assert problem.message == "plugin module 'scale_op' is not installed"
    assert "scale_op.py" in problem.hint  # the file is right there: say how to name it


def test_a_plugin_by_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    load_spec(graph_with(tmp_path, "[scale_op.py, kdgraph_test_module_plugin]", "scale_op.py"))
    assert LOSSES.get("test_module_l1").module == "kdgraph_test_module_plugin"


def write_distribution(site: Path, entry_points: str, modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees it: a .dist-info folder and its modules."""
    info = site / "kdgraph_test_dist-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdgraph-test-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kdgraph.plugins]\n{entry_points}")
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text)


def test_installed_plugins_load_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ok = "from kdgraph import register_loss\n\n@register_loss('test_ep_l1')\ndef l1(pred, target):\n    return pred\n"
    calls = "from kdgraph import register_loss\n\ndef setup():\n    register_loss('test_ep_called')(lambda p, t: p)\n"
    write_distribution(
        tmp_path / "site",
        "good = kdgraph_test_ep_ok\ncalled = kdgraph_test_ep_calls:setup\nbad = kdgraph_test_ep_missing\n",
        {"kdgraph_test_ep_ok": ok, "kdgraph_test_ep_calls": calls},
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(catalog, "_entry_points_loaded", False)
    with caplog.at_level(logging.WARNING, logger="kdgraph.plugins"):
        load_builtins()
        load_builtins()  # once per process: the second call loads nothing
    assert "test_ep_l1" in LOSSES and "test_ep_called" in LOSSES
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "plugin 'bad (kdgraph_test_ep_missing)' failed to import: ModuleNotFoundError" in warning


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDGRAPH_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "kdgraph", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_validates_runs_and_draws_a_plugin_graph_outside_the_repo(tmp_path: Path) -> None:
    for f in ("graph.yaml", "scale_op.py"):
        shutil.copy(FIXTURES / f, tmp_path / f)
    commands = [
        ["validate", "graph.yaml"],
        ["run", "graph.yaml", "+train.limit_batches=2", "+train.limit_eval_batches=1", "--out", "run"],
    ]
    from kdgraph.cli import build_parser

    if "draw" in build_parser()._subparsers._group_actions[0].choices:
        commands.append(["draw", "graph.yaml", "-o", "graph.dot"])
    for args in commands:
        done = run_cli(args, tmp_path)
        assert done.returncode == 0, f"kdgraph {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    if len(commands) == 3:
        assert "test_scale" in (tmp_path / "graph.dot").read_text()
