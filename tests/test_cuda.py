"""The speed options on a real GPU: each trains as the plain fp32 run does (skipped without CUDA).

Run by ``benchmarks/gpu_check.sh``. Every variant is a whole ``kdgraph run`` in its own process (Accelerate's
precision is per process), from the same seed on the same synthetic CIFAR-shaped data; the comparison is on
the final weights and the logged losses, with tolerances for what each option legitimately changes
(cuDNN's algorithm choice for channels_last, kernel fusion under torch.compile, bf16's 8-bit mantissa).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GRAPH = """\
kdgraph: 1
name: cuda
data: {dataset: synthetic, size: 256, test_size: 64, image_size: 32, channels: 3, classes: 10, batch_size: 64}
nodes:
  teacher: {net: resnet8, frozen: true}
  student: {net: resnet8}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
train:
  epochs: 1
  seed: 3
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 1
  progress: false
deploy: student.logits
"""


def _run(tmp_path: Path, name: str, *overrides: str, text: str = GRAPH) -> tuple[dict, list[dict]]:
    graph = tmp_path / "cuda.yaml"
    graph.write_text(text)
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("KDGRAPH_CPU", None)
    cmd = [sys.executable, "-m", "kdgraph", "run", str(graph), "--out", str(out), *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["device"].startswith("cuda")
    state = torch.load(out / "final.pt", map_location="cpu", weights_only=True)["graph"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return state, [r["losses"] for r in lines if r["kind"] == "train"]


def _close(a: dict, b: dict, rtol: float, atol: float, nodes: tuple[str, ...] = ("student",)) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point() and key.split(".")[1] in nodes and key.startswith("nodes."):
            assert torch.allclose(a[key].float(), b[key].float(), rtol=rtol, atol=atol), key


def _losses_close(a: list[dict], b: list[dict], rtol: float) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert all(abs(x[k] - y[k]) <= rtol * max(1.0, abs(y[k])) for k in y), (x, y)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    return _run(tmp_path_factory.mktemp("base"), "base", "++train.optimizer.impl=foreach")


def test_channels_last_trains_as_nchw(tmp_path: Path, base) -> None:
    state, losses = _run(tmp_path, "cl", "++train.channels_last=true", "++train.optimizer.impl=foreach")
    _close(state, base[0], rtol=1e-3, atol=1e-4)
    _losses_close(losses, base[1], 1e-3)


def test_fused_optimizer_equals_foreach(tmp_path: Path, base) -> None:
    state, losses = _run(tmp_path, "fused", "++train.optimizer.impl=fused")
    _close(state, base[0], rtol=1e-4, atol=1e-5)
    _losses_close(losses, base[1], 1e-4)


def test_device_loader_trains_as_host_loader(tmp_path: Path, base) -> None:
    host, host_losses = _run(tmp_path, "host", "++data.loader=host", "++train.optimizer.impl=foreach")
    device, device_losses = _run(tmp_path, "device", "++data.loader=device", "++train.optimizer.impl=foreach")
    _close(device, host, rtol=1e-4, atol=1e-5)
    _losses_close(device_losses, host_losses, 1e-4)


def test_compile_trains_as_eager(tmp_path: Path, base) -> None:
    state, losses = _run(tmp_path, "compiled", "++train.compile=true", "++train.optimizer.impl=foreach")
    _close(state, base[0], rtol=1e-3, atol=1e-4)
    _losses_close(losses, base[1], 1e-3)


def test_bf16_autocast_stays_near_fp32(tmp_path: Path, base) -> None:
    state, losses = _run(tmp_path, "bf16", "++train.precision=bf16", "++train.optimizer.impl=foreach")
    assert all(v == v and abs(v) < 1e4 for r in losses for v in r.values())  # finite
    # bf16 keeps 8 bits of mantissa: the first step's losses agree to a few parts in a hundred
    _losses_close(losses[:1], base[1][:1], 3e-2)


def test_output_cache_trains_as_recomputing(tmp_path: Path) -> None:
    for augment in ("false", "true"):
        opts = (f"data.augment={augment}", "++train.optimizer.impl=foreach")
        plain, plain_losses = _run(tmp_path, f"plain-{augment}", *opts)
        cached, cached_losses = _run(tmp_path, f"cached-{augment}", *opts, "train.cache=auto")
        _close(cached, plain, rtol=1e-5, atol=1e-5)
        _losses_close(cached_losses, plain_losses, 1e-5)


def test_fused_peers_train_as_separate_nets(tmp_path: Path) -> None:
    # the frozen teacher becomes a trained resnet8 peer of the student: the two run as one stacked call
    text = GRAPH.replace("teacher: {net: resnet8, frozen: true}", "peer: {net: resnet8}").replace(
        "from: teacher.logits, to: student.logits, weight: 0.9, T: 4}",
        "from: peer.logits, to: student.logits, weight: 0.9, T: 4}\n  - {loss: ce, from: data.label, to: peer.logits}",
    )
    opts = ("++train.optimizer.impl=foreach",)
    plain, plain_losses = _run(tmp_path, "alone", *opts, text=text)
    fused, fused_losses = _run(tmp_path, "fused", *opts, "++train.fuse=on", text=text)
    # TF32 convolutions pick other algorithms for a grouped conv: the channels_last tolerance
    _close(fused, plain, rtol=1e-3, atol=1e-4, nodes=("student", "peer"))
    _losses_close(fused_losses, plain_losses, 1e-3)
