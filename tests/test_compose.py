"""Composition with `extends:`: merging by name, removal with ~, conflicts, cycles, lines in parents."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kdgraph.cli import main
from kdgraph.errors import SpecError
from kdgraph.spec import SCHEMA_PATH, load_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compose"


def doc_of(name: str | Path) -> dict:
    return load_spec(FIXTURES / name).doc


def problems_of(path: str | Path) -> list:
    with pytest.raises(SpecError) as err:
        load_spec(path)
    return err.value.problems


def without_identity(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("name", "title")}


def test_two_parents_resolve_to_the_hand_written_combination() -> None:
    merged = doc_of("combined.yaml")
    assert without_identity(merged) == without_identity(doc_of("combined_by_hand.yaml"))
    assert "extends" not in merged
    jsonschema.validate(merged, json.loads(SCHEMA_PATH.read_text()))


def test_the_child_replaces_an_inherited_edge_in_place() -> None:
    spec = load_spec(FIXTURES / "combined.yaml")
    assert [e.name for e in spec.edges] == ["ce:data->student", "kd:teacher->student", "dkd:teacher->student"]
    assert spec.edge("ce:data->student").weight == 0.5  # the child's, not either parent's


def test_cosmetic_keys_are_not_inherited_where_the_parents_disagree() -> None:
    assert "cite" not in doc_of("combined.yaml")  # ce_kd and dkd_like cite different papers
    assert doc_of("removal.yaml")["cite"] == "Hinton et al. 2015"  # one parent: inherited


def test_removal_of_a_node_an_edge_and_a_var() -> None:
    parent, child = doc_of("ce_kd.yaml"), doc_of("removal.yaml")
    assert set(child["nodes"]) == {"student"}
    assert [e["loss"] for e in child["edges"]] == ["ce"]
    assert child["vars"] == {"alpha": 0.1}
    assert child["train"] == parent["train"]


def test_removing_what_no_parent_defines_is_a_problem_with_a_suggestion() -> None:
    (problem,) = problems_of(FIXTURES / "remove_unknown.yaml")
    assert problem.file.endswith("remove_unknown.yaml") and problem.line == 6
    assert "'~studnet' removes node 'studnet'" in problem.message
    assert "student" in problem.hint


def test_child_replaces_a_parent_node_and_deep_merges_train() -> None:
    doc = doc_of("replace_node.yaml")
    assert doc["nodes"]["student"] == {"net": "cnn", "width": 12}
    assert doc["nodes"]["teacher"] == doc_of("ce_kd.yaml")["nodes"]["teacher"]
    assert doc["train"]["optimizer"] == {"type": "sgd", "lr": 0.1, "momentum": 0.9}
    assert doc["train"]["epochs"] == 4


def test_parent_conflict_names_both_files_and_lines() -> None:
    problems = problems_of(FIXTURES / "conflict.yaml")
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {"vars.T", "edges.ce:data->student"}
    edge = by_path["edges.ce:data->student"]
    assert edge.file.endswith("conflict.yaml") and edge.line == 3  # the child's extends line
    assert "ce_kd.yaml:12" in edge.message and "dkd_like.yaml:12" in edge.message
    assert "ce_kd.yaml:6" in by_path["vars.T"].message and "dkd_like.yaml:6" in by_path["vars.T"].message


def test_extends_cycle_is_an_error_showing_the_cycle() -> None:
    (problem,) = problems_of(FIXTURES / "cycle_a.yaml")
    assert problem.message.startswith("extends cycle: ")
    cycle = problem.message.removeprefix("extends cycle: ").split(" -> ")
    assert [Path(p).name for p in cycle] == ["cycle_a.yaml", "cycle_b.yaml", "cycle_a.yaml"]
    assert problem.file.endswith("cycle_b.yaml") and problem.line == 2  # where the cycle closes


def test_extending_itself_is_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "self.yaml").write_text("kdgraph: 1\nextends: self.yaml\nname: me\nnodes: {a: {net: cnn}}\n")
    (problem,) = problems_of(tmp_path / "self.yaml")
    assert problem.message.startswith("extends cycle: ") and problem.line == 2


def test_missing_parent_is_located_at_its_extends_entry(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text("kdgraph: 1\nextends: [nowhere.yaml]\nname: c\nnodes: {a: {net: cnn}}\n")
    (problem,) = problems_of(tmp_path / "child.yaml")
    assert "nowhere.yaml" in problem.message and "does not exist" in problem.message
    assert problem.path == "extends[0]" and problem.line == 2


def test_an_error_in_an_inherited_edge_points_into_the_parent_file() -> None:
    (problem,) = problems_of(FIXTURES / "bad_child.yaml")
    assert problem.file.endswith("bad_parent.yaml") and problem.line == 10
    assert problem.path == "edges[1].loss" and "unknown loss 'kdd'" in problem.message
    spec = load_spec(FIXTURES / "bad_child.yaml", check_registry=False)
    assert spec.locator.where(("edges", 3, "weight")) == (str(FIXTURES / "bad_child.yaml"), 6)  # the child's own
    assert spec.locator.where(("nodes", "teacher", "net"))[0].endswith("bad_parent.yaml")


def test_relative_paths_of_a_parent_are_rewritten_for_a_child_elsewhere() -> None:
    spec = load_spec(FIXTURES / "sub" / "child.yaml")  # init.from must still name fixtures/compose/teacher.yaml
    assert spec.doc["nodes"]["teacher"]["init"] == {"from": "../teacher.yaml"}
    assert (spec.base_dir / spec.doc["nodes"]["teacher"]["init"]["from"]).resolve() == FIXTURES / "teacher.yaml"


def test_diamond_takes_the_override_over_the_inherited_value() -> None:
    doc = doc_of("diamond.yaml")  # mid_a changes alpha, mid_b changes epochs; both extend ce_kd.yaml
    assert doc["vars"]["alpha"] == 0.2 and doc["train"]["epochs"] == 6
    assert doc["edges"][0]["weight"] == pytest.approx(0.2)


def test_diamond_keeps_a_removal_made_by_one_parent() -> None:
    doc = doc_of("diamond_removal.yaml")  # mid_c removes the KD edge that mid_b merely inherits
    assert [e["loss"] for e in doc["edges"]] == ["ce"]


def test_derived_edge_names_survive_a_change_of_position(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text(
        """kdgraph: 1
name: parent
nodes: {t: {net: cnn}, s: {net: cnn}}
edges:
  - {loss: mse, from: t.logits, to: s.logits}
  - {loss: mse, from: t.logits, to: s.logits, weight: 2.0}
stages:
  - {name: only_second, edges: ["mse:t->s#1"]}
"""
    )
    (tmp_path / "other.yaml").write_text(
        "kdgraph: 1\nname: other\nnodes: {s: {net: cnn}}\nedges:\n  - {loss: ce, from: data.label, to: s.logits}\n"
    )
    (tmp_path / "child.yaml").write_text("kdgraph: 1\nextends: [other.yaml, parent.yaml]\nname: child\n")
    spec = load_spec(tmp_path / "child.yaml")
    assert [e.name for e in spec.edges] == ["ce:data->s", "mse:t->s", "mse:t->s#1"]
    assert spec.edge("mse:t->s#1").weight == 2.0
    assert spec.stages[0].edges == ["mse:t->s#1"]


def test_a_parents_plugin_file_is_found_from_the_child(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "noop.py").write_text("# registers nothing\n")
    (tmp_path / "base" / "parent.yaml").write_text(
        "kdgraph: 1\nname: p\nplugins: [noop.py]\nnodes: {s: {net: cnn}}\n"
        "edges:\n  - {loss: ce, from: data.label, to: s.logits}\n"
    )
    (tmp_path / "child.yaml").write_text("kdgraph: 1\nextends: base/parent.yaml\nname: c\nplugins: [base/noop.py]\n")
    doc = load_spec(tmp_path / "child.yaml").doc
    assert doc["plugins"] == ["base/noop.py"]  # one file, named twice: listed once


def test_validate_resolved_prints_the_merged_graph(capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", "--resolved", "--no-dry-run", str(FIXTURES / "combined.yaml")]) == 0
    out = capsys.readouterr().out
    assert "extends" not in out and "dkd" in out and "name: ce_kd_dkd" in out


def test_extends_must_name_files(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text("kdgraph: 1\nextends: {a: 1}\nname: c\nnodes: {a: {net: cnn}}\n")
    (problem,) = problems_of(tmp_path / "child.yaml")
    assert problem.message == "extends takes a graph file or a list of them" and problem.line == 2
