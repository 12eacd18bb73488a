"""Fuzzing the graph reader through the CLI: hostile graph files, extends, vars, overrides, presets, pairs.

Inputs are generated from grammars of what kdgraph reads: valid skeletons (a tiny synthetic KD graph
that dry-runs in milliseconds, and every method under graphs/) with values replaced by hostile YAML
*text* (NaN, inf, huge and negative numbers, YAML 1.1 octal and base-60 ints, python tags, aliases,
merges, deep nesting), text damaged at random places, extends chains/diamonds/cycles, vars chains,
command-line overrides and presets. Each ends in exit 0 or exit 2 naming the file and line (see
tests/_fuzz.py); none may run past the time bound or touch a file outside its workspace.

Run longer: ``KDGRAPH_FUZZ_EXAMPLES=5000 python -m pytest -q -m fuzz tests/test_fuzz_*.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ._fuzz import assert_clean, changed, fuzz_settings, make_sentinel, run_cli, snapshot, value_paths
from .conftest import KD_CNN

pytestmark = pytest.mark.fuzz
REPO = Path(__file__).resolve().parent.parent
METHODS = sorted(p.name for p in (REPO / "graphs").glob("*.yaml"))
TAG_TARGET = "PWNED"  # a python tag that ran would create this file in the sentinel folder


def laughs(depth: int) -> str:
    """A billion-laughs value in one flow collection: each level repeats the one before ten times."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth):
        levels.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "[" + ", ".join(levels) + "]"


def hostile_tokens(sentinel: Path) -> st.SearchStrategy[str]:
    """A YAML scalar or flow collection, as text, of a kind a reader gets wrong."""
    fixed = [
        ".nan",
        ".NaN",
        ".inf",
        "-.inf",
        "1e999",
        "-1e999",
        "1e308",
        "1e-320",
        "-0.0",
        "0",
        "-1",
        "-4",
        "9" * 400,
        "-" + "9" * 30,
        "2" * 20,
        "010",
        "0o17",
        "0x1F",
        "0b101",
        "1:30",
        "190:20:30",
        "1_000",
        "+12",
        "yes",
        "on",
        "off",
        "No",
        "~",
        "null",
        "2001-12-14",
        "''",
        "'x'",
        "true",
        "[]",
        "{}",
        "[1, 2]",
        "{x: 1}",
        "[.nan, .inf]",
        "[0]",
        "[-1, 0, 1]",
        "{value: .nan, warmup: -1}",
        "{value: 1, until: 1e999}",
        "{cosine: [0, .inf], epochs: 0}",
        "'${1e308 * 10}'",
        "'${2 ** 2 ** 2 ** 2 ** 2 ** 2}'",
        "'${9 ** 9 ** 9}'",
        "'${1 / 0}'",
        "'${nan}'",
        "'${undefined_var}'",
        "'${' + '(' * 200 + '1' + ')' * 200 + '}'",
        "'${__import__(\"os\")}'",
        "'${().__class__}'",
        f"!!python/object/apply:os.system ['touch {sentinel / TAG_TARGET}']",
        "!!python/name:os.system",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!!float nan",
        "!!int '0x10'",
        "&a [1, 2]",
        "*undefined",
        "[&x [1, 2], *x, *x]",
        "{<<: {epochs: 1}, epochs: 2}",
        "{<<: {<<: {<<: {a: 1}}}}",
        "{<<: [{a: 1}, {b: 2}], c: 3}",
        laughs(9),
        laughs(3),
        '"\\x00"',
        '"\\uD800"',
        '"a\\tb"',
        "'" + "x" * 100_000 + "'",
        "[" + ", ".join(["1"] * 50_000) + "]",
        "'../../../../etc/passwd'",
        f"'{sentinel}'",
        "/dev/zero",
        "'/proc/self/fd/0'",
    ]
    nested = st.integers(1, 3000).map(lambda d: "[" * d + "]" * d)
    nested_maps = st.integers(1, 2000).map(lambda d: "{a: " * d + "1" + "}" * d)
    numbers = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: yaml.safe_dump(f).split("\n")[0]),
        st.integers(-(10**30), 10**30).map(str),
    )
    return st.one_of(st.sampled_from(fixed), nested, nested_maps, numbers)


def _set(doc: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def with_hostile_values(text: str, data: st.DataObject, tokens: st.SearchStrategy[str]) -> str:
    """The document with 1-3 values replaced by hostile YAML text (placeholders, then the raw text)."""
    doc = yaml.safe_load(text)
    raw: dict[str, str] = {}
    for i in range(data.draw(st.integers(1, 3), label="how many values")):
        paths = value_paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="where")
        raw[f"__HOSTILE{i}__"] = data.draw(tokens, label="value")
        _set(doc, path, f"__HOSTILE{i}__")
    out = yaml.safe_dump(doc, sort_keys=False, width=1 << 20)
    for key, token in raw.items():
        out = out.replace(key, token)
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace: graphs/ copied (extends and init paths resolve), the tiny skeleton, a cache, a sentinel."""
    root = tmp_path_factory.mktemp("fuzz_graphs")
    shutil.copytree(REPO / "graphs", root / "work" / "graphs")
    (root / "work" / "tiny.yaml").write_text(KD_CNN)
    make_sentinel(root / "sentinel")
    (root / "cache").mkdir()
    return root


def _validate(ws: Path, name: str, *extra: str, dry: bool = True) -> None:
    """validate NAME, judged: clean, located to a line, and nothing outside work/ and cache/ touched."""
    before = snapshot(ws / "sentinel")
    argv = ["validate", name, *extra] + ([] if dry else ["--no-dry-run"])
    outcome = run_cli(argv, ws / "work", env={"KDGRAPH_CACHE": str(ws / "cache")})
    assert_clean(outcome, need_line=True)
    assert not changed(before, snapshot(ws / "sentinel")), f"files outside the workspace changed: {argv}"


@fuzz_settings(20)
@given(data=st.data())
def test_hostile_values_in_the_tiny_graph(ws: Path, data: st.DataObject) -> None:
    """Dry run included: a value the schema lets through must still fail cleanly (or run) on real tensors."""
    text = with_hostile_values(KD_CNN, data, hostile_tokens(ws / "sentinel"))
    (ws / "work" / "fuzzed.yaml").write_text(text)
    _validate(ws, "fuzzed.yaml")


@fuzz_settings(20)
@given(data=st.data())
def test_hostile_values_in_every_method(ws: Path, data: st.DataObject) -> None:
    """The methods under graphs/ (stages, views, schedules, init.from), without the dry run (zoo nets are big)."""
    source = data.draw(st.sampled_from(METHODS), label="method")
    text = with_hostile_values((REPO / "graphs" / source).read_text(), data, hostile_tokens(ws / "sentinel"))
    (ws / "work" / "graphs" / "_fuzzed.yaml").write_text(text)
    _validate(ws, "graphs/_fuzzed.yaml", dry=False)


DAMAGE = [
    ":",
    "{",
    "}",
    "[",
    "- ",
    "\t",
    "'",
    '"',
    "&a ",
    "*a ",
    "<<: *a\n",
    "!!python/name:os.system ",
    "\x00",
    "\ufeff",
    "%YAML 1.1\n---\n",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "\n  ",
    "#",
    "\r",
    "\x85",
    "\\",
]


@fuzz_settings(20)
@given(data=st.data())
def test_damaged_text(ws: Path, data: st.DataObject) -> None:
    """Characters inserted, dropped or doubled anywhere in a method's text."""
    source = data.draw(st.sampled_from(["tiny.yaml", *(f"graphs/{m}" for m in METHODS)]), label="source")
    text = (ws / "work" / source).read_text() if source == "tiny.yaml" else (REPO / source).read_text()
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        i = data.draw(st.integers(0, max(len(text) - 1, 0)), label="at")
        cut = data.draw(st.integers(0, 3), label="cut")
        text = text[:i] + data.draw(st.sampled_from(DAMAGE), label="insert") + text[i + cut :]
    target = ws / "work" / ("fuzzed.yaml" if source == "tiny.yaml" else "graphs/_fuzzed.yaml")
    target.write_bytes(text.encode("utf-8", "surrogatepass"))
    _validate(ws, str(target.relative_to(ws / "work")), dry=source == "tiny.yaml")


def _tiny_child(parents: list[str], var: int) -> str:
    return f"extends: {parents}\nvars: {{k{var}: {var}}}\n"


@fuzz_settings(12)
@given(
    layers=st.integers(1, 40),
    width=st.integers(1, 3),
    cycle=st.sampled_from([None, "self", "back", "missing"]),
)
def test_extends_chains_diamonds_and_cycles(ws: Path, layers: int, width: int, cycle: str | None) -> None:
    """Layers of files, each extending every file of the layer below: a chain (width 1) or diamonds (2^layers paths)."""
    folder = ws / "work" / "ext"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "base.yaml").write_text(KD_CNN.replace("name: kd_cnn", "name: ext"))
    below = ["base.yaml"]
    for layer in range(layers):
        names = [f"l{layer}_{j}.yaml" for j in range(width)]
        for j, name in enumerate(names):
            parents = list(below)
            if cycle == "self" and layer == layers - 1 and j == 0:
                parents.append(name)
            if cycle == "back" and layer == layers - 1 and j == 0:
                parents.append("l0_0.yaml" if layers > 1 else name)
            if cycle == "missing" and layer == layers // 2 and j == 0:
                parents.append("nowhere.yaml")
            (folder / name).write_text(_tiny_child(parents, layer))
        below = names
    top = folder / "top.yaml"
    top.write_text(f"extends: {below}\nname: top\n")
    _validate(ws, "ext/top.yaml", dry=False)


@fuzz_settings(12)
@given(
    n=st.integers(1, 2000),
    shape=st.sampled_from(["chain", "chain_typo", "cycle", "self", "fan", "deep_expr"]),
    use_as=st.sampled_from(["T", "weight", "epochs", "lr"]),
)
def test_vars_chains(ws: Path, n: int, shape: str, use_as: str) -> None:
    """n chained vars, a cycle through them, a typo at the end of the chain, or one var read n times."""
    lines = ["v0: 1"]
    for i in range(1, n):
        ref = f"v{i - 1}"
        if shape == "cycle" and i == n - 1:
            lines[0] = f"v0: '${{v{n - 1} + 1}}'"
        if shape == "fan":
            ref = "v0"
        expr = f"{ref} * 1" if shape != "deep_expr" else "(" * 50 + ref + ")" * 50
        lines.append(f"v{i}: '${{{expr}}}'")
    if shape == "self":
        lines.append("me: '${me + 1}'")
    last = "v_typo" if shape == "chain_typo" else ("me" if shape == "self" else f"v{n - 1}")
    vars_block = "vars:\n" + "".join(f"  {line}\n" for line in lines)
    text = KD_CNN.replace("kdgraph: 1\n", "kdgraph: 1\n" + vars_block)
    slot = {"T": "T: 4", "weight": "weight: 0.9", "epochs": "epochs: 3", "lr": "lr: 0.05"}[use_as]
    text = text.replace(slot, f"{slot.split(':')[0]}: '${{{last}}}'", 1)
    (ws / "work" / "vars.yaml").write_text(text)
    _validate(ws, "vars.yaml", dry=False)


def override_keys() -> st.SearchStrategy[str]:
    paths = [".".join(str(p) for p in path) for path in value_paths(yaml.safe_load(KD_CNN))]
    paths = [p.replace(".0", "[0]").replace(".1", "[1]") for p in paths]
    odd = [
        "edges[99].weight",
        "edges[-1].weight",
        "edges[-99].T",
        f"edges[{10**30}].T",
        "edges[0][0]",
        "nodes..x",
        "[0]",
        "",
        ".",
        "nodes.student.net.x",
        "train.optimizer.lr.x",
        "edges.weight",
        "nodes[0]",
        "vars.T",
        "train.epochs[0]",
        "data",
        "nodes",
        "edges",
        "kdgraph",
        "stages[0].epochs",
        "é",
        "nodes.student\x00",
    ]
    return st.one_of(st.sampled_from(paths), st.sampled_from(odd), st.text(max_size=12))


@fuzz_settings(25)
@given(data=st.data())
def test_hostile_overrides(ws: Path, data: st.DataObject) -> None:
    """key=value, +key=value, ++key=value and ~key with hostile keys, indices and values."""
    tokens = hostile_tokens(ws / "sentinel")
    items = []
    for _ in range(data.draw(st.integers(1, 3), label="overrides")):
        prefix = data.draw(st.sampled_from(["", "", "+", "++", "~"]), label="prefix")
        key = data.draw(override_keys(), label="key")
        value = data.draw(tokens, label="value")
        items.append(f"~{key}" if prefix == "~" else f"{prefix}{key}={value}")
    items = [i for i in items if not i.startswith("-")]  # an option, not an override: argparse's business
    _validate(ws, "tiny.yaml", *items)


PRESET_KEYS = ["kdgraph_preset", "title", "nets", "data", "train", "stage_epochs", "vars", "graphs"]


@fuzz_settings(12)
@given(data=st.data())
def test_hostile_presets(ws: Path, data: st.DataObject) -> None:
    """A preset file (`--preset file.yaml`) built from the preset grammar with hostile values and keys."""
    tokens = hostile_tokens(ws / "sentinel")
    base = yaml.safe_load((REPO / "graphs" / "presets" / "digits.yaml").read_text())
    text = with_hostile_values(yaml.safe_dump(base, sort_keys=False), data, tokens)
    if data.draw(st.booleans(), label="extra key"):
        text += f"{data.draw(st.sampled_from(PRESET_KEYS + ['zzz', 'extends']))}: {data.draw(tokens)}\n"
    (ws / "work" / "graphs" / "_preset.yaml").write_text(text)
    graph = data.draw(st.sampled_from(["graphs/kd.yaml", "graphs/slkd.yaml", "graphs/reviewkd.yaml", "tiny.yaml"]))
    _validate(ws, graph, "--preset", "graphs/_preset.yaml", dry=False)


@fuzz_settings(10)
@given(data=st.data())
def test_hostile_pairs(ws: Path, data: st.DataObject) -> None:
    """A `pairs:` table with hostile entries, through `list pairs` and `validate --pair`."""
    doc = yaml.safe_load((REPO / "graphs" / "dkd.yaml").read_text())
    pairs = doc["pairs"]
    name = data.draw(st.sampled_from(sorted(pairs)), label="pair")
    placeholder = "__PAIR__"
    path = data.draw(st.sampled_from([(name, *p) for p in value_paths(pairs[name])] + [(name,)]), label="where")
    _set(pairs, path, placeholder)
    text = yaml.safe_dump(doc, sort_keys=False, width=1 << 20)
    text = text.replace(placeholder, data.draw(hostile_tokens(ws / "sentinel"), label="value"))
    (ws / "work" / "graphs" / "_pairs.yaml").write_text(text)
    before = snapshot(ws / "sentinel")
    listed = run_cli(["list", "pairs", "graphs/_pairs.yaml"], ws / "work")
    assert_clean(listed, need_line=True)
    _validate(ws, "graphs/_pairs.yaml", "--pair", name, dry=False)
    assert not changed(before, snapshot(ws / "sentinel"))


def test_nesting_past_the_recursion_limit_names_its_line(ws: Path) -> None:
    """Found by this tier: 3,000 nested lists exhaust the composer's recursion; the error still names the line."""
    (ws / "work" / "deep.yaml").write_text("kdgraph: 1\nname: deep\nnotes: " + "[" * 3000 + "]" * 3000 + "\n")
    outcome = run_cli(["validate", "deep.yaml"], ws / "work", env={"KDGRAPH_CACHE": str(ws / "cache")})
    assert outcome.code == 2 and outcome.err.startswith("deep.yaml:3: YAML nested deeper than"), outcome.describe()


def test_an_override_too_long_for_a_file_name_is_an_override(ws: Path) -> None:
    """Found by this tier: a long override was probed as a file name, and the OSError was the message."""
    value = "{a: " * 300 + "1" + "}" * 300
    outcome = run_cli(["validate", "tiny.yaml", f"+train.progress={value}"], ws / "work")
    assert outcome.code == 2 and outcome.err.startswith("<command line>: train.progress:"), outcome.describe()


def test_an_override_nested_past_the_recursion_limit_is_one_line(ws: Path) -> None:
    """Found by the hostile corpus: a value of 5,000 nested lists was a RecursionError (exit 1)."""
    outcome = run_cli(["validate", "tiny.yaml", "train.epochs=" + "[" * 5000 + "]" * 5000], ws / "work")
    assert outcome.code == 2 and outcome.err.startswith("<command line>: train.epochs:"), outcome.describe()


NUMBERS = [  # every number of the tiny graph that a range covers: (path, placeholder text in KD_CNN)
    (("train", "optimizer", "lr"), "lr: 0.05"),
    (("train", "optimizer", "momentum"), "momentum: 0.9"),
    (("train", "optimizer", "weight_decay"), "weight_decay: 5.0e-4"),
    (("train", "epochs"), "epochs: 3"),
    (("data", "batch_size"), "batch_size: 8"),
    (("edges", 1, "T"), "T: 4"),
    (("edges", 1, "weight"), "weight: 0.9"),
    (("edges", 0, "weight"), "weight: 0.1"),
]
NON_FINITE = [".nan", ".inf", "-.inf", "1e999", "-1e999", "'${1e308 * 10}'", "'${1e999 - 1e999}'"]


@fuzz_settings(15)
@given(where=st.sampled_from(NUMBERS), value=st.sampled_from(NON_FINITE), how=st.sampled_from(["file", "override"]))
def test_non_finite_numbers_are_refused(ws: Path, where: tuple, value: str, how: str) -> None:
    """Accepted nonsense is a finding too: NaN or inf at any ranged number is exit 2 with its line, never exit 0."""
    path, text = where
    key = text.split(":")[0]
    if how == "file":
        (ws / "work" / "nonfinite.yaml").write_text(KD_CNN.replace(text, f"{key}: {value}", 1))
        argv = ["validate", "nonfinite.yaml"]
    else:
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        argv = ["validate", "tiny.yaml", f"{dotted}={value}"]
    outcome = run_cli(argv, ws / "work", env={"KDGRAPH_CACHE": str(ws / "cache")})
    assert outcome.code == 2, f"{argv} with {'.'.join(map(str, path))}: {value} was accepted\n{outcome.describe()}"
    assert_clean(outcome, need_line=True)
