"""Bounded work on the spec side: extends diamonds, long var chains, nested merges, hostile overrides,
presets and pairs tables each cost a bounded time and end in one located error, never a traceback.

Each timed case runs under an alarm, so a regression to exponential or cubic work fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdgraph import yaml12
from kdgraph.cli import main
from kdgraph.errors import SpecError
from kdgraph.spec import load_spec

BODY = """data: {dataset: synthetic, size: 16, test_size: 8, image_size: 8, channels: 1, classes: 4, batch_size: 4}
nodes:
  student: {net: cnn, width: 2}
edges:
  - {loss: ce, from: data.label, to: student.logits}
  - {loss: ce, from: data.label, to: student.logits, name: again}
train: {epochs: 1}
"""
GRAPH = "kdgraph: 1\nname: g\n" + BODY
BOUND_S = 5


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) when the block runs longer than ``seconds``, instead of hanging the suite."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < seconds


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One load first: the imports a first load_spec pays (torch, the registries) are not the work timed here."""
    path = tmp_path_factory.mktemp("warm") / "g.yaml"
    path.write_text(GRAPH)
    load_spec(path)


def problems_of(path: Path, overrides: list[str] | None = None) -> list:
    with pytest.raises(SpecError) as err:
        load_spec(path, overrides)
    return err.value.problems


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- extends


def diamond_chain(folder: Path, files: int) -> Path:
    """``files`` files in levels of two, each file extending both of the level below; the top extends the last."""
    (folder / "l0a.yaml").write_text(GRAPH)
    (folder / "l0b.yaml").write_text(GRAPH)  # the same definitions in a second file: the parents agree
    for level in range(1, files // 2):
        for side in "ab":
            parents = f"[l{level - 1}a.yaml, l{level - 1}b.yaml]"
            (folder / f"l{level}{side}.yaml").write_text(
                f"kdgraph: 1\nextends: {parents}\nvars: {{v{level}: {level}}}\n"
            )
    top = folder / "top.yaml"
    last = files // 2 - 1
    top.write_text(f"kdgraph: 1\nextends: [l{last}a.yaml, l{last}b.yaml]\nname: top\n")
    return top


def test_48_diamond_extends_files_validate_in_seconds_reading_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = diamond_chain(tmp_path, 48)
    reads: Counter[str] = Counter()
    real_read = yaml12.read_graph_text

    def counted(path: Path) -> str:
        reads[Path(path).name] += 1
        return real_read(path)

    monkeypatch.setattr(yaml12, "read_graph_text", counted)
    with within(BOUND_S):
        spec = load_spec(top)
    assert spec.doc["vars"] == {f"v{i}": i for i in range(1, 24)} and len(spec.edges) == 2
    assert len(reads) == 49 and max(reads.values()) == 1  # 48 parents and the top, each read once


def test_a_parent_of_3000_vars_reached_twice_merges_in_seconds(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(GRAPH + "vars:\n" + "".join(f"  v{i}: {i}\n" for i in range(3000)))
    (tmp_path / "a.yaml").write_text(
        "kdgraph: 1\nextends: base.yaml\nvars:\n" + "".join(f"  v{i}: -1\n" for i in range(0, 3000, 2))
    )
    (tmp_path / "b.yaml").write_text("kdgraph: 1\nextends: base.yaml\nvars: {w: 1}\n")
    (tmp_path / "top.yaml").write_text("kdgraph: 1\nextends: [a.yaml, b.yaml]\nname: top\n")
    with within(BOUND_S):
        spec = load_spec(tmp_path / "top.yaml")
    values = spec.doc["vars"]
    assert len(values) == 3001 and values["v2"] == -1 and values["v3"] == 3  # a's change wins over base's value


def test_an_extends_chain_deeper_than_the_bound_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "f0.yaml").write_text(GRAPH)
    for i in range(1, 80):
        (tmp_path / f"f{i}.yaml").write_text(f"kdgraph: 1\nextends: f{i - 1}.yaml\n")
    with within(BOUND_S):
        (problem,) = problems_of(tmp_path / "f79.yaml")
    assert "extends chain deeper than 64 files" in problem.message and problem.line == 2


def test_an_extends_cycle_inside_a_diamond_is_named_once(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("kdgraph: 1\nextends: top.yaml\n")
    (tmp_path / "a.yaml").write_text("kdgraph: 1\nextends: base.yaml\n")
    (tmp_path / "b.yaml").write_text("kdgraph: 1\nextends: base.yaml\n")
    (tmp_path / "top.yaml").write_text(GRAPH + "extends: [a.yaml, b.yaml]\n")
    (problem,) = problems_of(tmp_path / "top.yaml")
    cycle = problem.message.removeprefix("extends cycle: ").split(" -> ")
    assert [Path(p).name for p in cycle] == ["top.yaml", "a.yaml", "base.yaml", "top.yaml"]


@pytest.mark.parametrize("parent", ['"a\\0b.yaml"', "a" * 5000 + ".yaml"], ids=["nul", "too_long"])
def test_a_parent_name_the_file_system_refuses_is_located(tmp_path: Path, parent: str) -> None:
    (tmp_path / "g.yaml").write_text(GRAPH + f"extends: {parent}\n")
    (problem,) = problems_of(tmp_path / "g.yaml")
    assert "cannot be read" in problem.message and problem.line == GRAPH.count("\n") + 1


# ----------------------------------------------------------------------------- vars


def chained_vars(path: Path, n: int, reverse: bool) -> Path:
    """``v0: 1``, ``v1: ${v0 + 1}`` ... written last-first when ``reverse`` (each var before the one it uses)."""
    lines = ["  v0: 1"] + [f"  v{i}: ${{v{i - 1} + 1}}" for i in range(1, n)]
    path.write_text(GRAPH + "vars:\n" + "\n".join(reversed(lines) if reverse else lines) + "\n")
    return path


def test_2000_chained_vars_validate_in_seconds(tmp_path: Path) -> None:
    path = chained_vars(tmp_path / "vars.yaml", 2000, reverse=True)  # the order that cost minutes
    with within(BOUND_S):
        spec = load_spec(path)
    assert spec.doc["vars"]["v1999"] == 2000 and spec.doc["vars"]["v1000"] == 1001


def test_2000_broken_vars_are_reported_in_seconds(tmp_path: Path) -> None:
    lines = [f"  v{i}: ${{w{i} + v{i + 1}}}" for i in range(2000)] + ["  v2000: 1"]
    path = tmp_path / "broken.yaml"
    path.write_text(GRAPH + "vars:\n" + "\n".join(lines) + "\n")
    with within(BOUND_S):
        problems = problems_of(path)
    assert len(problems) == 1 and problems[0].path == "vars.v1999"  # the others only repeat it
    assert "unknown var 'w1999'" in problems[0].message


def test_a_vars_cycle_is_named(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(GRAPH + 'vars: {a: "${b + 1}", b: "${c + 1}", c: "${a * 2}", d: "${a}", e: 1}\n')
    problems = problems_of(tmp_path / "g.yaml")
    assert {p.path for p in problems} == {"vars.a", "vars.b", "vars.c"}  # d only uses the cycle
    assert all("cycle: a -> b -> c -> a" in p.message and p.line == 10 for p in problems)


# ----------------------------------------------------------------------------- merge keys


def test_a_merge_inside_a_merge_counts_toward_the_value_bound(tmp_path: Path) -> None:
    lines = ["a0: &a0 {k0: 1, k1: 2, k2: 3, k3: 4, k4: 5, k5: 6, k6: 7, k7: 8, k8: 9, k9: 10}"]
    lines += [f"a{i}: &a{i} {{<<: *a{i - 1}, p{i}: {{<<: *a{i - 1}}}}}" for i in range(1, 18)]
    (tmp_path / "g.yaml").write_text(GRAPH + "\n".join(lines) + "\n")
    with within(BOUND_S):
        (problem,) = problems_of(tmp_path / "g.yaml")
    assert "expands to more than 100,000 values" in problem.message and problem.line is not None


def test_a_merge_of_a_list_of_the_same_merge_counts_each_copy(tmp_path: Path) -> None:
    lines = ["a0: &a0 {k0: 1, k1: 2}"] + [
        f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i + 1}: 1}}" for i in range(1, 24)
    ]
    with within(BOUND_S), pytest.raises(SpecError) as err:
        yaml12.parse("\n".join(lines) + "\n", "m.yaml")
    assert "expands to more than 100,000 values" in str(err.value)


def test_merges_of_merges_keep_values_and_lines() -> None:
    text = "a: &a {x: 1, y: 1}\nb: &b\n  <<: *a\n  y: 2\nc:\n  <<: [*b, {z: 0, x: 9}]\n  z: 3\n"
    data, lines, problems = yaml12.parse(text, "m.yaml")
    assert data["c"] == {"x": 1, "y": 2, "z": 3} and not problems
    assert lines[("c", "x")] == 1 and lines[("c", "y")] == 4 and lines[("c", "z")] == 7


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "override",
    ["+edges[99]={loss: ce}", "++edges[99]=1", "+edges[-5]=1", "edges[-1].weight=1", "~edges[-2]"],
)
def test_an_override_index_outside_the_list_is_one_error(tmp_path: Path, override: str) -> None:
    (tmp_path / "g.yaml").write_text(GRAPH)
    (problem,) = problems_of(tmp_path / "g.yaml", [override])
    assert problem.file == "<command line>" and repr(override) in problem.message
    assert "the list has 2 items" in problem.hint


def test_an_override_path_deeper_than_the_reader_allows_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(GRAPH + "vars: {T: 4}\n")
    (problem,) = problems_of(tmp_path / "g.yaml", ["++vars." + ".".join(["a"] * 100) + "=1"])
    assert problem.file == "<command line>" and "deeper than 64 levels" in problem.message


def test_appending_at_the_end_works_one_past_it_does_not(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(GRAPH)
    spec = load_spec(tmp_path / "g.yaml", ["+edges[2]={loss: ce, from: data.label, to: student.logits, name: third}"])
    assert [e.name for e in spec.edges][-1] == "third"
    (problem,) = problems_of(tmp_path / "g.yaml", ["+edges[3]={loss: ce, from: data.label, to: student.logits}"])
    assert "+key appends at index 2" in problem.hint


# ----------------------------------------------------------------------------- presets


HOSTILE_PRESETS = {
    "a_list": ("- nets\n- data\n", 1),
    "a_number": ("42\n", 1),
    "nets_a_list": ("kdgraph_preset: 1\nnets: [resnet8, resnet20]\n", 2),
    "net_a_number": ("kdgraph_preset: 1\nnets:\n  cnn: 5\n", 3),
    "net_without_net": ("kdgraph_preset: 1\nnets:\n  cnn: {width: 3}\n", 3),
    "data_a_list": ("kdgraph_preset: 1\ndata: [1]\n", 2),
    "train_a_number": ("kdgraph_preset: 1\ntrain: 7\n", 2),
    "graphs_entry_a_number": ("kdgraph_preset: 1\ngraphs:\n  g: 3\n", 3),
    "vars_a_list": ("kdgraph_preset: 1\nvars: [1]\n", 2),
    "stage_epochs_a_list": ("kdgraph_preset: 1\nstage_epochs: [1]\n", 2),
    "unknown_key": ("kdgraph_preset: 1\ntitle: t\nbogus: 1\n", 3),
    "extends_itself": ("kdgraph_preset: 1\nextends: extends_itself.yaml\n", 2),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PRESETS))
def test_a_hostile_preset_is_exit_2_at_its_file_and_line(tmp_path: Path, capsys, name: str) -> None:
    text, line = HOSTILE_PRESETS[name]
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / f"{name}.yaml").write_text(text)
    (tmp_path / "g.yaml").write_text(GRAPH)
    code, err = cli(capsys, "validate", "--no-dry-run", str(tmp_path / "g.yaml"), "--preset", name)
    assert code == 2 and "unexpected" not in err and "Traceback" not in err
    assert f"{tmp_path / 'presets' / name}.yaml:{line}: " in err


@pytest.mark.parametrize(
    "section", ["name: [1]\nnodes: {s: {net: cnn}}", "name: x\nnodes: [1]", "name: x\nvars: [lr]\nnodes: {}"]
)
def test_a_preset_over_a_malformed_graph_leaves_the_graph_schema_to_report_it(
    tmp_path: Path, capsys, section: str
) -> None:
    (tmp_path / "g.yaml").write_text(f"kdgraph: 1\n{section}\ndata: [1]\n")
    code, err = cli(capsys, "validate", "--no-dry-run", str(tmp_path / "g.yaml"), "--preset", "digits")
    assert code == 2 and "unexpected" not in err and f"{tmp_path / 'g.yaml'}:" in err


# ----------------------------------------------------------------------------- pairs


HOSTILE_PAIRS = {
    "entry_a_list": "pairs:\n  a-b: [1]\n",
    "entry_a_number": "pairs:\n  a-b: 5\n",
    "nodes_a_list": "pairs:\n  a-b: {nodes: [1]}\n",
    "node_a_list": "pairs:\n  a-b: {nodes: {student: [1]}}\n",
    "vars_a_list": "pairs:\n  a-b: {vars: [1]}\n",
    "overrides_a_number": "pairs:\n  a-b: {overrides: 5}\n",
    "override_a_number": "pairs:\n  a-b: {overrides: [5]}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PAIRS))
@pytest.mark.parametrize("command", [["validate", "--no-dry-run", "--pair", "a-b"], ["list", "pairs"]])
def test_a_malformed_pairs_table_is_exit_2_at_its_file_and_line(
    tmp_path: Path, capsys, name: str, command: list[str]
) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH + HOSTILE_PAIRS[name])
    code, err = cli(capsys, *command, str(path))
    assert code == 2 and "unexpected" not in err and "Traceback" not in err
    assert f"{path}:{GRAPH.count(chr(10)) + 2}: pairs.a-b" in err


def test_list_pairs_with_a_top1_that_is_no_number_is_exit_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH + "pairs:\n  a-b: {published: {top1: abc}}\n")
    code, err = cli(capsys, "list", "pairs", str(path))
    assert code == 2 and "unexpected" not in err and f"{path}:{GRAPH.count(chr(10)) + 2}: pairs.a-b.published" in err


def test_list_pairs_of_a_graph_whose_nodes_are_a_list_is_no_traceback(tmp_path: Path, capsys) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("kdgraph: 1\nname: x\nnodes: [1]\npairs:\n  a-b: {nodes: {student: {net: cnn}}}\n")
    code, err = cli(capsys, "list", "pairs", str(path))
    assert code == 0 and "unexpected" not in err
    code, err = cli(capsys, "validate", "--no-dry-run", "--pair", "a-b", str(path))
    assert code == 2 and f"{path}:5: pairs.a-b.nodes.student: no node 'student'" in err
