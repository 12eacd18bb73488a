"""Numbers and data as values: every number finite and in its range, YAML 1.2 ints, typed loss and op
parameters, evaluation on logits only, a run that takes at least one optimizer step (issue 23, part 5).

Each case is `kdgraph validate` on a small graph: exit status 2 and one error line with file:line.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from kdgraph.cli import main
from kdgraph.params import choice, integer, real, reals
from kdgraph.yaml12 import parse_value

GRAPH = """\
kdgraph: 1
name: values
vars: {{T: 4, lr: 0.1}}
data: {{dataset: synthetic, size: 16, test_size: 8, image_size: 8, channels: 1, classes: 4, batch_size: 4}}
nodes:
  teacher: {{net: cnn, width: 2, frozen: true}}
  student: {{net: cnn, width: {width}}}
edges:
  - {{loss: ce, from: data.label, to: student.logits}}
  - {{loss: kd, from: teacher.logits, to: student.logits, T: {T}}}
train:
  epochs: {epochs}
  optimizer: {{type: sgd, lr: {lr}}}
  eval: [{eval}]
"""
DEFAULTS = {"width": "2", "T": "4", "epochs": "1", "lr": "0.1", "eval": "student.logits"}


def validate(tmp_path: Path, *overrides: str, **values: str) -> tuple[int, str]:
    """Exit status and stderr of `kdgraph validate` on GRAPH with `values` filled in."""
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH.format(**{**DEFAULTS, **values}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", "--no-dry-run", str(path), *overrides])
    return code, err.getvalue()


def one_error(code: int, err: str, where: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(where), err
    for w in words:
        assert w in lines[0], err


def test_the_graph_itself_is_valid(tmp_path: Path) -> None:
    assert validate(tmp_path) == (0, "")


@pytest.mark.parametrize(("lr", "shown"), [(".nan", ".nan"), (".inf", ".inf"), ("-.inf", "-.inf")])
def test_nan_and_inf_pass_no_range(tmp_path: Path, lr: str, shown: str) -> None:
    code, err = validate(tmp_path, lr=lr)
    one_error(code, err, f"{tmp_path}/g.yaml:13: train.optimizer.lr:", f"finite number, not {shown}")


def test_nan_in_an_override_and_in_vars(tmp_path: Path) -> None:
    one_error(*validate(tmp_path, "train.optimizer.lr=.nan"), "<command line>: train.optimizer.lr:", "finite")
    one_error(*validate(tmp_path, "vars.lr=-.inf", lr="'${lr}'"), "<command line>: vars.lr:", "finite")


@pytest.mark.parametrize("T", ["0", "-4", "-0.5"])
def test_temperature_on_a_kd_edge_is_positive(tmp_path: Path, T: str) -> None:
    code, err = validate(tmp_path, T=T)
    one_error(code, err, f"{tmp_path}/g.yaml:10: edges[1].T:", "must be greater than 0", "loss 'kd' takes T")


def test_temperature_from_vars_is_checked_after_substitution(tmp_path: Path) -> None:
    code, err = validate(tmp_path, "vars.T=-3", T="'${T}'")
    one_error(code, err, f"{tmp_path}/g.yaml:10: edges[1].T:", "greater than 0, not -3")


def test_temperature_schedule_is_checked_at_its_ends(tmp_path: Path) -> None:
    code, err = validate(tmp_path, T="{cosine: [4, 0], epochs: 5}")
    one_error(code, err, f"{tmp_path}/g.yaml:10: edges[1].T:", "schedule value must be greater than 0, not 0")
    assert validate(tmp_path, T="{value: 4, warmup: 2}") == (0, "")


@pytest.mark.parametrize("T", ["{value: 4, until: 1}", "{value: 4, from: 2}"])
def test_a_windowed_temperature_is_zero_outside_its_window(tmp_path: Path, T: str) -> None:
    """`until`/`from` make the value 0 outside the window (kdgraph/schedule.py): T = 0 there divides by zero."""
    code, err = validate(tmp_path, T=T)
    one_error(code, err, f"{tmp_path}/g.yaml:10: edges[1].T:", "outside the schedule's until/from window")
    # a weight may be 0 (ESKD drops its KD term after `until`): the same schedule on a weight is accepted
    assert validate(tmp_path, "+edges[1].weight={value: 0.5, until: 1}") == (0, "")


def test_a_learned_temperature_port_is_left_to_run_time(tmp_path: Path) -> None:
    code, err = validate(tmp_path, T="teacher.logits")  # a port: accepted here (its shape is the loss's)
    assert "must be" not in err, err


def test_std_of_zero_is_refused(tmp_path: Path) -> None:
    code, err = validate(tmp_path, "+data.std=[0]")
    one_error(code, err, "<command line>: data.std[0]:", "greater than 0")


def test_leading_zero_is_decimal(tmp_path: Path) -> None:
    assert parse_value("010") == 10 and parse_value("0o10") == 8 and parse_value("0x10") == 16
    path = tmp_path / "g.yaml"
    validate(tmp_path, width="010")
    err = io.StringIO()
    with contextlib.redirect_stdout(err):
        main(["validate", "--no-dry-run", "--resolved", str(path)])
    assert "width: 10}" in err.getvalue()


def test_base_60_and_digit_separators_are_strings(tmp_path: Path) -> None:
    assert parse_value("1:30") == "1:30" and parse_value("1_000") == "1_000"
    one_error(*validate(tmp_path, epochs="1:30"), f"{tmp_path}/g.yaml:12: train.epochs:", "'1:30'")
    one_error(*validate(tmp_path, "train.epochs=1:30"), "<command line>: train.epochs:", "'1:30'")


@pytest.mark.parametrize("width", [str(10**30), str(10**20), "9" * 5000], ids=["1e30", "1e20", "5000-digits"])
def test_huge_integers_are_refused(tmp_path: Path, width: str) -> None:
    code, err = validate(tmp_path, width=width)
    one_error(code, err, f"{tmp_path}/g.yaml:7: nodes.student.width:", "out of range")


def test_top1_on_a_feature_map_is_refused(tmp_path: Path) -> None:
    code, err = validate(tmp_path, eval="student.feat1")
    one_error(code, err, f"{tmp_path}/g.yaml:14: train.eval[0]:", "student.feat1 is a feature map", "not class logits")


@pytest.mark.parametrize(
    ("overrides", "where", "why"),
    [
        (["train.epochs=0"], "<command line>: train.epochs:", "train.epochs is 0"),
        (["data.subset=3", "data.drop_last=true"], "{file}:4: data.batch_size:", "3 training samples"),
    ],
)
def test_a_run_of_zero_steps_is_refused(tmp_path: Path, overrides: list[str], where: str, why: str) -> None:
    code, err = validate(tmp_path, *overrides)
    one_error(code, err, where.format(file=f"{tmp_path}/g.yaml"), "no optimizer step", why)


def test_every_builtin_loss_and_op_parameter_is_declared() -> None:
    """A parameter a graph file may set has a declared type and range (kdgraph/params.py)."""
    from kdgraph.catalog import load_builtins
    from kdgraph.docs import FROM_DATA, LOSS_INPUTS, PLUMBING
    from kdgraph.registry import LOSSES, OPS

    load_builtins()
    missing = []
    for entry in LOSSES.entries() + OPS.entries():
        if not entry.module.startswith("kdgraph."):
            continue
        names = list(entry.parameters())[2:] if entry.kind == "loss" else list(entry.parameters())
        for name in names:
            if name not in (*FROM_DATA, *PLUMBING, *LOSS_INPUTS) and name not in entry.declared():
                missing.append(f"{entry.kind} {entry.name}.{name}")
        assert set(entry.declared()) <= set(names), entry.name  # no declaration of a parameter it lacks
    assert not missing, missing


def test_param_ranges() -> None:
    assert real(gt=0).problem(0) == "must be greater than 0, not 0"
    assert real(gt=0).problem(float("nan")) is not None
    assert real(ge=0, le=1).problem(1.5) == "must be at most 1, not 1.5"
    assert integer().problem(2.5) == "expected an integer, not 2.5"
    assert integer().problem(2**21) is not None and integer().problem(16384) is None
    assert choice("a", "b").problem("c") == "'c' is not one of a, b"
    assert reals(gt=0).problem([4, 0]) == "item 1: must be greater than 0, not 0"
    assert real(gt=0).problem(True) == "expected a number, not True"
    assert real(gt=0).describe() == "a number > 0"
    assert integer(le=64, null=True).describe() == "an integer in [1, 64], or null"


def test_a_net_parameter_is_bounded(tmp_path: Path) -> None:
    """A width of a billion would allocate tens of GB at build: its declared range refuses it first."""
    code, err = validate(tmp_path, width="1000000000")
    one_error(code, err, f"{tmp_path}/g.yaml:7: nodes.student.width:", "at most 4096", "net 'cnn' takes width")


def test_an_op_parameter_is_typed_and_bounded(tmp_path: Path) -> None:
    extra = ["+nodes.soft={op: soften, in: [student.logits], T: 0.5, log: maybe}"]
    code, err = validate(tmp_path, *extra)
    one_error(code, err, "<command line>: nodes.soft.log:", "expected true or false, not 'maybe'")
    code, err = validate(tmp_path, "+nodes.crd={op: crd, in: [student.pooled, teacher.pooled], nce_k: 100000000}")
    one_error(code, err, "<command line>: nodes.crd.nce_k:", "at most 1048576")


@pytest.mark.parametrize(
    ("override", "bound"), [("train.epochs=1125899906842624", "100000"), ("data.workers=100000", "256")]
)
def test_counts_of_the_run_are_bounded(tmp_path: Path, override: str, bound: str) -> None:
    """Below 2**53 but no count a run means: a bound in the schema, located like any range."""
    one_error(*validate(tmp_path, override), f"<command line>: {override.split('=')[0]}:", f"at most {bound}")


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "x.pt", "--batch-size", "0"],
        ["profile", "g.yaml", "--steps", "0"],
        ["profile", "g.yaml", "--warmup", "-1"],
        ["plan", "g.yaml", "--batch", "-3"],
        ["run", "g.yaml", "--stop-after", "0"],
        ["sweep", "g.yaml", "--seeds", "0"],
        ["plan", "g.yaml", "--batch", "1e3"],
    ],
)
def test_command_line_counts_are_checked_before_any_work(argv: list[str], capsys) -> None:
    """Every integer option of the command line is one type with a range (kdgraph/args.py: count)."""
    from kdgraph.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"argument {argv[2]}:" in err and ("out of range" in err or "not a whole number" in err), err


@pytest.mark.parametrize("text", ["!!set {a, b}", "!!binary aGVsbG8=", "!!timestamp 2024-01-01", "!!omap [{a: 1}]"])
def test_yaml_11_types_beyond_the_core_schema_are_refused_at_their_line(tmp_path: Path, text: str) -> None:
    """A set, bytes or a date is no value of a graph file (a set in `pairs:` crashed json.dumps; found by the
    fuzzing tier's longer run); YAML 1.2's core schema has none of them."""
    from kdgraph import yaml12
    from kdgraph.errors import SpecError

    with pytest.raises(SpecError, match=r"g\.yaml:2: .*not in YAML 1\.2's core schema"):
        yaml12.parse(f"kdgraph: 1\nvars: {{x: {text}}}\n", "g.yaml")
    assert yaml12.parse("d: 2024-01-01\n", "g.yaml")[0] == {"d": "2024-01-01"}  # a date is a string in 1.2
