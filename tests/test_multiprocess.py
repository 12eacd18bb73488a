"""Data-parallel runs: 2 CPU processes (gloo) x batch B/2 train exactly as 1 process x batch B.

The two-process run goes through torchrun and the real CLI (``kdgraph.cli.main``), from a small
driver that also records how DistributedDataParallel was constructed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdgraph.spec import load_spec
from kdgraph.train import Trainer

from .conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end runs: the slow tier (pytest -m slow)

# BN-free (mlp nets), no augmentation: the only difference between the runs is who computes what.
# `probe` is distilled on its pooled features only: its classifier gets no gradient, so the dry run
# freezes it and DDP (built without find_unused_parameters) would fail at the second step otherwise.
GRAPH = """\
kdgraph: 1
name: ddp
data: {dataset: synthetic, size: 64, test_size: 32, image_size: 6, channels: 2, classes: 4, batch_size: 16,
       augment: false}
nodes:
  teacher: {net: mlp, hidden: [12], frozen: true}
  student: {net: mlp, hidden: [10]}
  probe:   {net: mlp, hidden: [12]}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.5}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.5, T: 2}
  - {loss: mse, from: teacher.pooled, to: probe.pooled}
train:
  epochs: 2
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 2
  progress: false
  eval: [student.logits]
deploy: student.logits
"""

DRIVER = """\
import json, os, sys
import torch.nn.parallel

seen = []
original = torch.nn.parallel.DistributedDataParallel.__init__

def recording_init(self, module, *args, **kwargs):
    seen.append({"find_unused_parameters": kwargs.get("find_unused_parameters", False)})
    original(self, module, *args, **kwargs)

torch.nn.parallel.DistributedDataParallel.__init__ = recording_init
from kdgraph.cli import main

code = main(sys.argv[1:])
rank = os.environ["RANK"]
with open(os.path.join(os.environ["DDP_RECORD"], f"ddp-{rank}.json"), "w") as fh:
    json.dump(seen, fh)
sys.exit(code)
"""


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_two_processes_train_like_one_with_the_global_batch(tmp_path: Path) -> None:
    graph = tmp_path / "ddp.yaml"
    graph.write_text(GRAPH)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {
        **os.environ,
        "KDGRAPH_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "DDP_RECORD": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    # no --out: the default runs/<name>/<time> must be chosen once and shared by both processes
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node", "2", str(driver), "run", str(graph)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(runs) == 1, runs  # one run directory, agreed by both processes
    two = runs[0]
    info = json.loads((two / "run.json").read_text())
    assert info["distributed_type"] == "MULTI_CPU" and info["processes"] == 2

    # DDP wrapped the planned graph once per process, without searching for unused parameters
    for rank in (0, 1):
        record = json.loads((tmp_path / f"ddp-{rank}.json").read_text())
        assert record == [{"find_unused_parameters": False}]

    assert_trains_like_one_process(graph, two, tmp_path / "one")


def assert_trains_like_one_process(graph: Path, many: Path, one: Path) -> None:
    """The run `many` (several processes) ends with the weights and logged losses of one process on `graph`."""
    Trainer(load_spec(graph), one, log=lambda *_: None).run()
    assert json.loads((one / "run.json").read_text())["distributed_type"] == "NO"

    a = torch.load(many / "final.pt", weights_only=True)["graph"]
    b = torch.load(one / "final.pt", weights_only=True)["graph"]
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
        moved += key.startswith("nodes.student.")
    assert moved
    assert torch.equal(a["nodes.probe.fc.weight"], b["nodes.probe.fc.weight"])  # frozen: no loss reaches it

    # logged train losses are the mean over processes: the same numbers as the single process
    def train_losses(run: Path) -> list[dict]:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["losses"] for r in lines if r["kind"] == "train"]

    for x, y in zip(train_losses(many), train_losses(one), strict=True):
        assert x.keys() == y.keys()
        assert all(abs(x[k] - y[k]) <= 1e-5 * max(1.0, abs(y[k])) for k in x), (x, y)
