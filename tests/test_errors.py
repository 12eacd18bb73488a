"""Problems are values: kind and subject (node, edge, key) are fields, and the error class follows the kinds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdgraph.check import check_graph
from kdgraph.errors import PlanError, Problem, SpecError, error_of

from .conftest import REPO

CORPUS = Path(__file__).resolve().parent / "bad_graphs"


def problems_of(case: str) -> tuple[type, list[Problem]]:
    with pytest.raises(SpecError) as err:
        check_graph(CORPUS / f"{case}.yaml")
    return type(err.value), err.value.problems


def test_a_cycle_alone_is_a_plan_error_about_its_first_node() -> None:
    kind, (problem,) = problems_of("21_cycle")
    assert kind is PlanError
    assert (problem.kind, problem.node, problem.edge, problem.key, problem.where) == (
        "cycle",
        "a",
        None,
        "in",
        ("nodes", "a", "in"),
    )


def test_three_kinds_at_once_are_a_spec_error_each_with_its_subject() -> None:
    kind, problems = problems_of("22_three_at_once")
    assert kind is SpecError  # an unknown net is not the planner's finding
    by_kind = {p.kind: p for p in problems}
    assert set(by_kind) == {"spec", "cycle", "port"}
    assert (by_kind["spec"].node, by_kind["spec"].key) == ("teacher", "net")
    assert (by_kind["cycle"].node, by_kind["cycle"].edge) == ("a", None)
    assert (by_kind["port"].edge, by_kind["port"].key, by_kind["port"].node) == (0, "to", None)


def test_a_failing_edge_in_the_dry_run_is_named_by_its_index() -> None:
    kind, (problem,) = problems_of("23_shape_mismatch")
    assert kind is PlanError and problem.kind == "dry_run"
    assert problem.where == ("edges", 1) and problem.edge == 1  # the mse edge, the second in the file


def test_missing_init_files_are_their_own_kind() -> None:
    _, problems = problems_of("39_missing_checkpoint")
    assert [p.kind for p in problems] == ["missing_file"]


def test_override_and_yaml_problems_carry_their_path_as_a_tuple() -> None:
    with pytest.raises(SpecError) as err:
        check_graph(CORPUS / "21_cycle.yaml", ["nodes.studnt.net=cnn"])
    (override,) = [p for p in err.value.problems if p.kind == "override"]
    assert (override.where, override.node, override.file) == (("nodes", "studnt"), "studnt", "<command line>")
    _, (duplicate,) = problems_of("04_duplicate_key")
    assert duplicate.kind == "yaml" and duplicate.where[-1] == duplicate.key


def test_error_of_chooses_the_class_from_the_kinds() -> None:
    plan = Problem("nodes.a", "x", kind="cycle", where=("nodes", "a"))
    spec = Problem("nodes.b.net", "y", where=("nodes", "b", "net"))
    assert type(error_of([plan])) is PlanError
    assert type(error_of([plan, spec])) is SpecError
    assert type(error_of([spec])) is SpecError


def test_list_into_a_closed_pipe_exits_0_silently() -> None:
    """`kdgraph list losses | head -1`: the reader leaves early, which is no error."""
    cmd = f"{sys.executable} -m kdgraph list losses | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("losses (") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""
