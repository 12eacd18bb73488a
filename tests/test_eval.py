"""Export carries its preprocessing: raw digits in, the run's top-1 out; `kdgraph eval`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kdgraph.cli import main
from kdgraph.data import load_dataset
from kdgraph.export import load_exported
from kdgraph.spec import DATA_DEFAULTS, merge

TINY = """\
kdgraph: 1
name: tiny
data: {dataset: digits, batch_size: 64, augment: false}
nodes:
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train: {epochs: 2, optimizer: {type: sgd, lr: 0.1, momentum: 0.9}, progress: false}
deploy: student.logits
"""


@pytest.fixture
def digits_run(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["run", "tiny.yaml", "--out", "run", "--quiet"]) == 0
    return tmp_path / "run"


def test_raw_digits_into_the_export_give_the_runs_top1(digits_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(digits_run), "-o", "m.pt", "--no-torchscript"]) == 0
    final = json.loads((digits_run / "summary.json").read_text())["final"]["top1"]["student.logits"]
    test = load_dataset(merge(DATA_DEFAULTS, {"dataset": "digits"}), tmp_path).test
    assert test.images.dtype == torch.uint8  # as the dataset gives them, nothing done to them
    model = load_exported("m.pt", raw=True)
    with torch.no_grad():
        top1 = 100 * float((model(test.images).argmax(1) == test.labels).float().mean())
    assert round(top1, 4) == final  # the summary keeps 4 decimals
    with torch.no_grad():  # floats in [0, 1] are the same images
        assert torch.equal(model(test.images.float() / 255).argmax(1), model(test.images).argmax(1))
    capsys.readouterr()
    assert main(["eval", "m.pt", "--data", "digits"]) == 0
    assert re.search(rf"top-1 {final:.2f}%  top-5 [\d.]+%  \(360 test images of digits\)", capsys.readouterr().out)
    assert main(["eval", str(digits_run)]) == 0  # a run directory: its own data
    assert f"top-1 {final:.2f}%" in capsys.readouterr().out


def test_eval_of_a_model_needs_data(digits_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(digits_run), "-o", "m.pt", "--no-torchscript"]) == 0
    assert main(["eval", "m.pt"]) == 2
    assert "give --data NAME" in capsys.readouterr().err
