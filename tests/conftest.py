"""Shared test setup: every test runs in its own working directory with its own teacher cache."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
GRAPHS = REPO / "graphs"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDGRAPH_DATA", str(tmp_path / "data"))


@pytest.fixture
def one_thread():
    """torch on one thread for the test (bitwise comparisons of runs, less contention), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# overrides that turn any CIFAR graph into a seconds-long smoke run on synthetic data
SMOKE = [
    "++data.dataset=synthetic",
    "++data.size=8",
    "++data.test_size=4",
    "++data.batch_size=2",
    "++data.eval_batch_size=4",
    "++train.limit_batches=2",
    "++train.limit_eval_batches=1",
    "++train.progress=false",
]


def cli(*argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `kdgraph ...` in this process."""
    from kdgraph.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def records(run_dir: Path) -> list[dict]:
    """The metrics.jsonl records of a run."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def node_state(state: dict, node: str) -> dict[str, torch.Tensor]:
    """One node's weights out of a whole graph's state_dict."""
    prefix = f"nodes.{node}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    """Bitwise equality of two state_dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load(path: Path) -> dict:
    """The graph weights of a checkpoint, final.pt or stage file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["graph"] if "graph" in state else state


@pytest.fixture
def clean_registries():
    """What a test's plugins register or import is gone afterwards (use with pytest.mark.usefixtures)."""
    from kdgraph.catalog import load_builtins
    from kdgraph.registry import REGISTRIES

    load_builtins()
    before = {kind: set(r.names()) for kind, r in REGISTRIES.items()}
    modules = set(sys.modules)
    yield
    for kind, registry in REGISTRIES.items():
        for name in set(registry.names()) - before[kind]:
            registry.unregister(name)
    for name in set(sys.modules) - modules:
        if name.startswith(("kdgraph_plugin_", "kdgraph_test_")):
            del sys.modules[name]


# one MLP with dropout, 4 batches an epoch, a checkpoint every 2 steps: the RNG state matters on resume
MLP_RUN = """\
kdgraph: 1
name: hostile
data: {dataset: synthetic, size: 32, test_size: 16, image_size: 8, channels: 1, classes: 4, batch_size: 8}
nodes:
  student: {net: mlp, hidden: [8], dropout: 0.2}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train:
  epochs: 2
  checkpoint_every: 2
  log_every: 1
  progress: false
  eval: [student.logits]
deploy: student.logits
"""

# a KD pair of small CNNs on tiny synthetic data: the training runs of the cache and checkpoint tests
KD_CNN = """\
kdgraph: 1
name: kd_cnn
data: {dataset: synthetic, size: 24, test_size: 8, image_size: 8, channels: 3, classes: 4, batch_size: 8}
nodes:
  teacher: {net: cnn, width: 4, frozen: true}
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
train:
  epochs: 3
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 1
  progress: false
deploy: student.logits
"""
