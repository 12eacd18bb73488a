"""Fused peers (train.fuse): which nodes the plan groups, which nets stack, and that fused steps equal unfused ones."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdgraph.catalog import load_builtins
from kdgraph.fuse import fuse_peers
from kdgraph.nets.base import PortNet
from kdgraph.plan import fusable_peers
from kdgraph.registry import NETS, PortInfo
from kdgraph.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def _pair(net: str, **params) -> tuple[nn.Module, nn.Module]:
    load_builtins()
    torch.manual_seed(0)
    make = NETS.get(net).obj
    return make(num_classes=10, **params), make(num_classes=10, **params)


def _buffers(*nets: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n in nets for b in n.buffers()]


@pytest.mark.parametrize(
    ("net", "params"),
    [
        ("resnet8", {}),
        ("resnet_tiny", {"depth": 8, "widths": [4, 4, 8, 8], "in_channels": 3}),
        ("wrn_16_1", {}),
        ("vgg8", {}),
    ],
)
def test_stacked_peers_compute_each_peers_ports_and_statistics(net: str, params: dict) -> None:
    a, b = _pair(net, **params)
    a, b = a.double(), b.double()
    ref_a, ref_b = copy.deepcopy(a), copy.deepcopy(b)
    fused = fuse_peers(("a", "b"), [a, b])
    assert not isinstance(fused, str), fused
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    wanted = frozenset({"logits", "pooled", "feat1", "preact2"})
    got = fused.ports(x, wanted)  # training mode: batch statistics, running statistics updated
    for out, ref in zip(got, (ref_a, ref_b)):
        want = ref.forward_ports(x, wanted)
        for port in wanted:
            assert out[port].shape == want[port].shape
            torch.testing.assert_close(out[port], want[port], rtol=0, atol=1e-12)
    # each peer's running statistics moved exactly as its own forward moved them
    for buf, ref in zip(_buffers(a, b), _buffers(ref_a, ref_b)):
        torch.testing.assert_close(buf, ref, rtol=0, atol=1e-14)
    # the peers' state_dicts keep their keys, and a loaded state reaches the fused call
    assert a.state_dict().keys() == ref_a.state_dict().keys()
    a.eval(), b.eval(), ref_a.eval(), ref_b.eval()
    torch.testing.assert_close(fused.ports(x, frozenset({"logits"}))[1]["logits"], ref_b(x), rtol=0, atol=1e-12)


def test_the_proof_refuses_a_net_that_mixes_channels() -> None:
    a, b = _pair("ShuffleV2")  # its channel shuffle moves channels across the stacked peers
    fused = fuse_peers(("a", "b"), [a, b])
    assert not isinstance(fused, str)
    before = _buffers(a, b)
    why = fused.prove(torch.randn(4, 3, 32, 32), frozenset({"logits"}))
    assert why is not None and "differs" in why
    assert all(torch.equal(x, y) for x, y in zip(before, _buffers(a, b)))  # the proof left no trace


def test_the_proof_accepts_a_zoo_resnet_and_leaves_no_trace() -> None:
    a, b = _pair("resnet8")
    fused = fuse_peers(("a", "b"), [a, b])
    x = torch.randn(4, 3, 32, 32)
    before, rng = _buffers(a, b), torch.get_rng_state()
    assert fused.prove(x, frozenset({"logits"})) is None
    assert all(torch.equal(x, y) for x, y in zip(before, _buffers(a, b)))
    assert torch.equal(rng, torch.get_rng_state())


class _WithDropout(PortNet):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(4, 3), nn.Dropout(0.5)

    def forward_ports(self, x: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        return {"logits": self.drop(self.fc(x))}

    def port_info(self) -> dict[str, PortInfo]:
        return {"logits": PortInfo("logits", 3, None)}


def test_modules_that_cannot_stack_are_named() -> None:
    assert "dropout" in fuse_peers(("a", "b"), [_WithDropout(), _WithDropout()])
    norm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert "LayerNorm" in fuse_peers(("a", "b"), [norm, copy.deepcopy(norm)])
    assert "unlike" in fuse_peers(("a", "b"), [nn.Linear(4, 3), nn.Linear(4, 5)])
    # plain Linear stacks: shared input (one matrix), then stacked features (one bmm)
    mlp = [nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)) for _ in range(3)]
    fused = fuse_peers(("a", "b", "c"), mlp)
    x = torch.randn(5, 4)
    for out, net in zip(fused.ports(x, frozenset({"logits"})), mlp):
        torch.testing.assert_close(out["logits"], net(x), rtol=1e-6, atol=1e-6)


def test_the_plan_groups_like_nets_on_one_input_in_one_mode() -> None:
    assert _groups("slkd.yaml") == [("slt1", "slt2")]  # the frozen teacher is not their peer
    assert _groups("dml.yaml") == [("peer1", "peer2")]
    assert _groups("dml.yaml", "nodes.peer2.net=resnet20") == []
    assert _groups("kd.yaml") == []


def _groups(file: str, *overrides: str) -> list[tuple[str, ...]]:
    from kdgraph.check import check_graph

    path = ROOT / "graphs" / file
    inits = [f"~nodes.{n}.init" for n, node in load_spec(path).doc["nodes"].items() if "init" in node]
    spec, graph = check_graph(path, ["data.dataset=synthetic", *inits, *overrides], dry=False)
    return fusable_peers(spec, graph.plan.stages[0])


GRAPH = """\
kdgraph: 1
name: peers
data: {dataset: synthetic, size: 24, test_size: 8, image_size: 8, channels: 3, classes: 4, batch_size: 8}
nodes:
  peer1: {net: cnn, width: 4}
  peer2: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: peer1.logits}
  - {loss: kd, from: peer2.logits, to: peer1.logits, T: 1}
  - {loss: ce, from: data.label, to: peer2.logits}
  - {loss: kd, from: peer1.logits, to: peer2.logits, T: 1}
train:
  epochs: 3
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 1
  progress: false
  eval: [peer1.logits]
"""


def _train(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, list[dict], list[str]]:
    from kdgraph.train import Trainer

    from .conftest import records

    path = tmp_path / "peers.yaml"
    path.write_text(GRAPH)
    lines: list[str] = []
    Trainer(load_spec(path, list(overrides)), tmp_path / name, log=lambda *a: lines.append(" ".join(map(str, a)))).run()
    state = torch.load(tmp_path / name / "final.pt", weights_only=True)["graph"]
    return state, [r["losses"] for r in records(tmp_path / name) if r["kind"] == "train"], lines


def test_a_fused_run_trains_as_an_unfused_one(tmp_path: Path, one_thread) -> None:
    plain, plain_losses, _ = _train(tmp_path, "plain")
    fused, fused_losses, lines = _train(tmp_path, "fused", "train.fuse=on")
    assert any("train.fuse: peer1 + peer2 fused" in line for line in lines), lines
    assert plain.keys() == fused.keys() and len(plain_losses) == len(fused_losses) == 9
    worst = max(float((plain[k].float() - fused[k].float()).abs().max()) for k in plain)  # BN statistics too
    worst = max(worst, *(abs(x[k] - y[k]) for x, y in zip(plain_losses, fused_losses) for k in x))
    assert worst <= 1e-5, worst


def test_auto_times_both_and_says_which_it_kept(tmp_path: Path, one_thread) -> None:
    _, _, lines = _train(tmp_path, "auto", "train.fuse=auto")
    said = [line for line in lines if "train.fuse: peer1 + peer2" in line and "ms stacked" in line]
    assert len(said) == 1, lines  # decided once, at the first batch


def test_fuse_off_in_yaml_is_the_string_off(tmp_path: Path) -> None:
    spec = load_spec(document={**load_spec(ROOT / "graphs" / "dml.yaml").doc, "train": {"fuse": "off"}})
    assert spec.stages[0].train["fuse"] == "off"
    from kdgraph.yaml12 import parse_value

    assert [parse_value(v) for v in ("off", "on", "yes", "no", "true", "False")] == [
        "off",
        "on",
        "yes",
        "no",
        True,
        False,
    ]


def test_plan_lists_the_fusable_peers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kdgraph", "plan", str(ROOT / "graphs" / "slkd.yaml"), "--no-memory"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "fusable peers (train.fuse: off" in out
    assert "peers slt1 + slt2: resnet32x4 on data.image; stacked call equal to each net alone" in out


@pytest.mark.slow
def test_a_fused_run_resumes_bitwise(tmp_path: Path) -> None:
    from .conftest import load, same

    base = [sys.executable, "-m", "kdgraph", "run", str(ROOT / "graphs" / "dml.yaml"), "--preset", "digits"]
    args = ["train.epochs=2", "train.fuse=on", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*base, *args, "--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    subprocess.run(
        [*base, *args, "--out", str(tmp_path / "part"), "--stop-after", "50"], check=True, env=env, capture_output=True
    )
    subprocess.run(
        [sys.executable, "-m", "kdgraph", "run", "--resume", str(tmp_path / "part"), "-q"],
        check=True,
        env=env,
        capture_output=True,
    )
    assert same(load(tmp_path / "full" / "final.pt"), load(tmp_path / "part" / "final.pt"))
