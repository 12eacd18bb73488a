"""The command line: the quickstart end to end, plan output, clean errors with exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdgraph.cli import main

from .conftest import GRAPHS, REPO


@pytest.mark.slow
def test_quickstart_reaches_the_promised_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(GRAPHS / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    teacher = float(re.search(r"teacher\.logits: top-1 ([\d.]+)%", out).group(1))
    student = float(re.search(r"student\.logits: top-1 ([\d.]+)%", out).group(1))
    assert teacher >= 95.0 and student >= 90.0, out


@pytest.mark.slow
def test_validate_all_graphs(capsys: pytest.CaptureFixture[str]) -> None:
    # the dry run of every graph is in test_graphs.py, which trains each one for real
    files = [str(p) for p in sorted(GRAPHS.glob("*.yaml"))]
    assert main(["validate", "--no-dry-run", *files]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(files)


def test_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(GRAPHS / "slkd.yaml")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if re.match(r"\s+\d+\s", line)}
    assert rows["teacher"][4:6] == ["frozen", "yes"]
    for node in ("slt1", "slt2", "student"):
        assert rows[node][4:6] == ["yes", "no"], rows[node]
    assert "param groups: slt1, slt2, student (one per node)" in out


BROKEN = """\
kdgraph: 1
name: broken
data: {dataset: synthetic, image_size: 8}
nodes:
  a: {op: mix, in: [b.out, data.image]}
  b: {op: mix, in: [a.out, data.image]}
  s: {net: resnet8x5}
edges:
  - {loss: ce, from: data.label, to: s.logits}
"""


@pytest.mark.slow
def test_bad_file_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    proc = subprocess.run(
        [sys.executable, "-m", "kdgraph", "validate", str(path)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}:7: nodes.s.net: unknown net 'resnet8x5' (did you mean 'resnet8x4'" in proc.stderr


def test_run_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    assert main(["run", str(GRAPHS / "quickstart.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+kd\s+\S", out, re.M) and re.search(r"^\s+ce\s+\S", out, re.M)
