"""The graph-file loader: lines, overrides, vars, schema and meaning checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgraph.errors import SpecError
from kdgraph.spec import load_spec, parse_override_key

from .conftest import GRAPHS

MINIMAL = """\
kdgraph: 1
name: tiny
vars: {alpha: 0.1, T: 4}
data: {dataset: synthetic, batch_size: 8}
nodes:
  teacher: {net: mlp, frozen: true}
  student: {net: mlp, hidden: [16]}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: "${alpha}"}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: "${1 - alpha}", T: "${T * 2}"}
train: {epochs: 2}
deploy: student.logits
"""


def write(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def messages(err: SpecError) -> list[str]:
    return err.lines()


def test_every_shipped_graph_loads() -> None:
    files = sorted(GRAPHS.glob("*.yaml")) + sorted(GRAPHS.glob("teachers/*.yaml"))
    assert len(files) >= 5
    for f in files:
        spec = load_spec(f)
        assert spec.nodes and spec.stages


def test_vars_and_expressions(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    kd = spec.edges[1]
    assert kd.weight == pytest.approx(0.9)
    assert kd.params["T"] == 8
    assert [e.name for e in spec.edges] == ["ce:data->student", "kd:teacher->student"]
    assert spec.stages[0].name == "main" and spec.stages[0].epochs == 2


def test_overrides_set_add_force_remove(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    spec = load_spec(
        path,
        [
            "train.epochs=5",
            "vars.T=2",
            "+nodes.student.dropout=0.1",
            "edges[1].weight=0.5",
            "~nodes.teacher.frozen",
            "++train.seed=3",
        ],
    )
    assert spec.train["epochs"] == 5 and spec.train["seed"] == 3
    assert spec.edges[1].params["T"] == 4 and spec.edges[1].weight == 0.5
    assert spec.nodes["student"].params["dropout"] == 0.1
    assert spec.nodes["teacher"].frozen is False
    assert parse_override_key("edges.2.weight") == ("edges", 2, "weight")


def test_override_typo_gets_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    with pytest.raises(SpecError) as err:
        load_spec(path, ["train.epocs=3", "+train.epochs=3", "~train.nothing", "novalue"])
    text = "\n".join(messages(err.value))
    assert "train.epocs" in text and "did you mean 'epochs'?" in text
    assert "key already exists" in text
    assert "no such key to remove" in text
    assert "has no '='" in text
    assert all(line.startswith("<command line>") for line in messages(err.value))


def test_problems_carry_lines_and_suggestions(tmp_path: Path) -> None:
    bad = MINIMAL.replace("net: mlp, hidden", "net: mpl, hidden").replace(
        'to: student.logits, weight: "${alpha}"', 'to: studnt.logits, weight: "${alpah}"'
    )
    path = write(tmp_path, bad)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    lines = messages(err.value)
    assert any(f"{path}:9: edges[0].weight: unknown var 'alpah'" in m and "'alpha'" in m for m in lines), lines


def test_meaning_checks(tmp_path: Path) -> None:
    bad = MINIMAL.replace("net: mlp, hidden", "net: mpl, hidden").replace(
        'to: student.logits, weight: "${alpha}"', "to: studnt.logits, weight: 0.1"
    )
    bad = bad.replace('T: "${T * 2}"', "Temp: 4")
    path = write(tmp_path, bad)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = "\n".join(messages(err.value))
    assert f"{path}:7: nodes.student.net: unknown net 'mpl' (did you mean 'mlp'" in text
    assert f"{path}:9: edges[0].to: unknown node 'studnt'" in text and "'student'" in text
    assert f"{path}:10: edges[1].Temp: loss 'kd' has no parameter 'Temp'" in text


def test_schema_errors(tmp_path: Path) -> None:
    bad = MINIMAL.replace("train: {epochs: 2}", "train: {epochs: 2, optimiser: {lr: 1}}").replace(
        "dataset: synthetic", "dataset: cifar1000"
    )
    path = write(tmp_path, bad)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = "\n".join(messages(err.value))
    assert "train.optimiser: unknown key 'optimiser' (did you mean 'optimizer'?)" in text
    assert "data.dataset: unknown dataset 'cifar1000' (did you mean 'cifar100'" in text  # the dataset registry


def test_malformed_yaml_and_duplicate_keys(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "kdgraph: 1\nnodes: {a: [\n", "broken.yaml"))
    assert "malformed YAML" in messages(err.value)[0] and "broken.yaml:" in messages(err.value)[0]
    dup = MINIMAL.replace("train: {epochs: 2}", "train: {epochs: 2}\ntrain: {epochs: 3}")
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, dup, "dup.yaml"))
    assert any("duplicate key" in m and ":12:" in m for m in messages(err.value))


def test_expression_safety(tmp_path: Path) -> None:
    for expr, message in [
        ("__import__('os')", "not plain arithmetic"),
        ("1/0", "division by zero"),
        ("alpha +", "cannot parse"),
    ]:
        path = write(tmp_path, MINIMAL.replace('"${1 - alpha}"', f'"${{{expr}}}"'))
        with pytest.raises(SpecError) as err:
            load_spec(path)
        assert message in "\n".join(messages(err.value)), expr


def test_stages_and_unknown_stage_edge(tmp_path: Path) -> None:
    staged = (
        MINIMAL + "stages:\n  - {name: warm, edges: [ce:data->student], epochs: 1}\n"
        "  - {name: distill, edges: [kd:teacher->student, nope]}\n"
    )
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, staged))
    assert any("stages[1].edges[1]: stage 'distill' names unknown edge 'nope'" in m for m in messages(err.value))
    ok = load_spec(write(tmp_path, staged.replace(", nope", ""), "ok.yaml"))
    assert [s.name for s in ok.stages] == ["warm", "distill"]
    assert ok.stages[0].epochs == 1 and ok.stages[1].epochs == 2


def test_hash_ignores_cosmetics(tmp_path: Path) -> None:
    a = load_spec(write(tmp_path, MINIMAL, "a.yaml"))
    b = load_spec(write(tmp_path, MINIMAL.replace("name: tiny", "name: tiny\ntitle: Something"), "b.yaml"))
    c = load_spec(write(tmp_path, MINIMAL, "c.yaml"), ["vars.T=3"])
    assert a.hash() == b.hash() != c.hash()


def test_string_vars_inside_text() -> None:
    from kdgraph.expr import substitute

    assert substitute("teacher.${feat}", {"feat": "feat3"}) == "teacher.feat3"
    assert substitute("${space}", {"space": "prob"}) == "prob"
    assert substitute("x${n * 2}", {"n": 3}) == "x6"
