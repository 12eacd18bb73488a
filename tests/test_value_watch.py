"""validate's dry run on an empty batch: it decides only where values cannot matter, else the real one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph import check
from kdgraph.cli import main
from kdgraph.value_watch import ValueWatch

from .conftest import GRAPHS

CORPUS = Path(__file__).resolve().parent / "bad_graphs"
TINY = "data: {dataset: synthetic, size: 16, test_size: 8, image_size: 8, channels: 1, classes: 4, batch_size: 4}"


pytestmark = pytest.mark.usefixtures("clean_registries")


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every dry run, in order."""
    seen: list[int] = []
    probe = check.probe

    def recording_probe(graph, batch=2):
        seen.append(batch)
        probe(graph, batch)

    monkeypatch.setattr(check, "probe", recording_probe)
    return seen


def watched(fn) -> str | None:
    with ValueWatch() as watch:
        fn()
    return watch.reason


def test_shapes_alone_need_no_values() -> None:
    x, w = torch.randn(0, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True)
    assert watched(lambda: torch.nn.functional.conv2d(x, w).flatten(1).softmax(1).sum().backward()) is None
    # labels index a dimension of 4 entries: the real dry run's labels {0, 1} are in range
    empty = torch.zeros(0, dtype=torch.long)
    assert watched(lambda: torch.nn.functional.cross_entropy(torch.randn(0, 4), empty)) is None
    assert watched(lambda: torch.nn.functional.one_hot(empty, 4)) is None
    assert watched(lambda: torch.randn(5, 3)[empty]) is None  # a memory bank of 5 rows, by sample position


def test_what_depends_on_values_is_noticed() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    # the real dry run's labels are 0 and 1: class 1 is out of range for one class
    assert "nll_loss" in watched(lambda: torch.nn.functional.cross_entropy(torch.randn(0, 1), empty))
    assert "gather" in watched(lambda: torch.randn(0, 1).gather(1, empty.reshape(0, 1)))
    assert "embedding" in watched(lambda: torch.nn.functional.embedding(empty, torch.randn(1, 3)))
    assert "index" in watched(lambda: torch.randn(1, 3)[empty])
    assert "_local_scalar_dense" in watched(lambda: torch.randn(3).sum().item())
    assert "_local_scalar_dense" in watched(lambda: bool(torch.ones(())))  # Python branching on a value
    assert "masked" in watched(lambda: torch.randn(0, 4)[torch.zeros(0, 4, dtype=torch.bool)])
    assert "nonzero" in watched(lambda: torch.randn(0).nonzero())
    assert "_linalg_svd" in watched(lambda: torch.linalg.svd(torch.randn(3, 3)))  # NaN: fails to converge


def test_validate_of_slkd_runs_no_real_dry_run(probes: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(GRAPHS / "slkd.yaml")]) == 0
    assert probes == [0]  # the empty batch decided: no forward of four ResNet-32x4 at N = 2
    assert "slkd.yaml: ok" in capsys.readouterr().out


def test_a_fit_goes_to_the_real_dry_run(probes: list[int]) -> None:
    assert main(["validate", str(GRAPHS / "kcd.yaml")]) == 0
    assert probes == [2]  # KCD's matching solves on the statistics the fit gathers: values decide


def test_an_error_only_values_show_is_still_found(
    tmp_path: Path, probes: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    """A one-class head under a cross entropy: the empty batch passes, the watch defers, the real run fails."""
    graph = tmp_path / "one_class.yaml"
    graph.write_text(
        f"kdgraph: 1\nname: one_class\n{TINY}\nnodes:\n  student: {{net: cnn, width: 2, num_classes: 1}}\n"
        "edges:\n  - {loss: ce, from: data.label, to: student.logits}\n"
    )
    assert main(["validate", str(graph)]) == 2
    assert probes == [0, 2]
    assert capsys.readouterr().err == (
        f"{graph}:7: edges[0]: edge 'ce:data->student' (loss ce, edges[0]): Target 1 is out of bounds. "
        "[student.logits (2, 1), data.label (2,)]\n"
    )


def test_a_shape_mismatch_reads_as_the_real_dry_runs(probes: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    """The corpus case the dry run finds: validate prints exactly what `kdgraph run` prints."""
    case = "23_shape_mismatch"
    assert main(["validate", str(CORPUS / f"{case}.yaml")]) == 2
    assert capsys.readouterr().err.replace(str(CORPUS), "<dir>") == (CORPUS / f"{case}.expected").read_text()
    assert probes == [0, 2]  # the empty batch failed; the real dry run's words (and batch 2) are the ones shown


def test_a_plugin_goes_to_the_real_dry_run(tmp_path: Path, probes: list[int], capsys) -> None:
    """A plugin's Python code may branch on values: the empty batch does not decide for it."""
    (tmp_path / "watch_vector_loss.py").write_text(
        "from kdgraph import register_loss\n\n\n@register_loss('watch_vector_l1')\n"
        "def watch_vector_l1(pred, target):\n    return (pred - target).abs().sum(dim=1)\n"
    )
    graph = tmp_path / "g.yaml"
    graph.write_text(
        f"plugins: [watch_vector_loss.py]\nkdgraph: 1\nname: g\n{TINY}\nnodes:\n"
        "  teacher: {net: cnn, width: 2, frozen: true}\n  student: {net: cnn, width: 2}\nedges:\n"
        "  - {loss: ce, from: data.label, to: student.logits}\n"
        "  - {loss: watch_vector_l1, from: teacher.logits, to: student.logits}\n"
    )
    assert main(["validate", str(graph)]) == 2
    assert probes == [2]
    assert "the loss returned shape (2,), not a scalar" in capsys.readouterr().err
