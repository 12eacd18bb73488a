"""Speed options and the hot loop: no host sync per step, device-side loss meter, bf16, channels_last,
torch.compile, fused/foreach optimizers, parameters no loss reaches frozen per stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdgraph.check import dry_run
from kdgraph.data import data_info_of
from kdgraph.graph import DataInfo, DistillGraph
from kdgraph.spec import load_spec
from kdgraph.train import Trainer, build_optimizer
from kdgraph.train.step import LossMeter, TrainStep

GRAPH = """\
kdgraph: 1
name: speed
data: {dataset: synthetic, size: 32, test_size: 16, image_size: 8, channels: 3, classes: 4, batch_size: 8}
nodes:
  teacher: {net: cnn, width: 4, frozen: true}
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: {value: 0.9, warmup: 4}, T: 4}
train:
  epochs: 2
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 3
  progress: false
deploy: student.logits
"""


def spec_of(tmp_path: Path, overrides: list[str] | None = None):
    path = tmp_path / "speed.yaml"
    path.write_text(GRAPH)
    return load_spec(path, overrides or [])


@pytest.fixture
def fresh_accelerate():
    """Accelerate's state is a process singleton: let a test pick its own precision, then reset it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


class _NoHostReads:
    """Make every device-to-host read of a tensor fail while active."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}

        def refuse(name):
            def method(*_a, **_k):
                raise AssertionError(f"host read Tensor.{name} inside the hot loop")

            return method

        for n in self.NAMES:
            setattr(torch.Tensor, n, refuse(n))
        return self

    def __exit__(self, *exc):
        for n, m in self.saved.items():
            setattr(torch.Tensor, n, m)


def test_training_step_reads_nothing_back_to_the_host(tmp_path: Path) -> None:
    from accelerate import Accelerator

    spec = spec_of(tmp_path, ["+train.grad_clip=1.0"])
    graph = DistillGraph(spec, DataInfo(*data_info_of(spec.data)))
    stage = graph.plan.stages[0]
    graph.set_stage(stage)
    acc = Accelerator(cpu=True)
    optimizer = build_optimizer(graph, stage, spec.stages[0].train, acc.device)
    model, optimizer = acc.prepare(graph, optimizer)
    step = TrainStep(acc, model, optimizer, grad_clip=1.0)
    meter = LossMeter(2, 4, acc.device)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    before = [p.detach().clone() for p in graph.nodes["student"].parameters()]
    with _NoHostReads():
        for _ in range(3):
            total, losses = step.forward(x, y, torch.arange(8))
            step.update(total)
            meter.add(losses)
    assert step.direct  # plain fp32 on one process: Accelerate's pass-through wrappers are skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, graph.nodes["student"].parameters()))
    means, steps = meter.read()
    assert steps == 3 and all(math.isfinite(m) for m in means)


def test_loss_meter_exact_first_bad_step_means_and_resume() -> None:
    meter = LossMeter(2, capacity=3, device="cpu")
    meter.start(11)  # the window's first row is global step 11
    rows = [[1.0, 2.0], [3.0, float("nan")], [5.0, 6.0], [7.0, float("inf")], [9.0, 10.0]]
    for r in rows[:2]:
        meter.add(torch.tensor(r))
    saved = meter.state()
    for r in rows[2:]:  # the fifth row overflows the capacity: rows are folded, nothing is lost
        meter.add(torch.tensor(r))
    assert meter.first_bad() == [-1, 12, 12]  # per edge, then the weighted total
    means, steps = meter.read()
    assert steps == 5 and means == pytest.approx([5.0, 18.0 / 5])  # non-finite values count as 0
    again = LossMeter(2, capacity=3, device="cpu")  # a resumed window: carried sums, then the rest
    again.start(13, saved["losses"], saved["steps"])
    for r in rows[2:]:
        again.add(torch.tensor(r))
    assert again.read() == meter.read()
    assert again.first_bad() == [-1, 14, 14]  # the resumed part only knows its own steps


@pytest.mark.slow
def test_graph_program_traces_as_one_graph_and_is_not_recompiled_each_epoch(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    graph = DistillGraph(spec, DataInfo(*data_info_of(spec.data)))
    graph.set_stage(graph.plan.stages[0])
    x, y, idx = torch.randn(4, 3, 8, 8), torch.arange(4), torch.arange(4)
    explained = torch._dynamo.explain(graph)(x, y, idx)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    torch._dynamo.reset()
    compiled_graphs = []

    def backend(gm, _inputs):
        compiled_graphs.append(gm)
        return gm.forward

    compiled = torch.compile(graph, backend=backend)
    eager_total, _ = graph(x, y, idx)
    total, losses = compiled(x, y, idx)
    assert torch.allclose(total, eager_total)
    graph.set_epoch(3)  # the warm-up weight changes: a tensor slot, not a new constant
    total3, _ = compiled(x, y, idx)
    assert torch.allclose(total3, graph(x, y, idx)[0]) and not torch.allclose(total3, total)
    assert len(compiled_graphs) == 1


@pytest.mark.slow
def test_compile_option_reaches_torch_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # inductor needs ~30 s to compile even this graph on a CPU; the eager backend still runs dynamo's
    # tracing of the real planned graph inside the real training loop
    real = torch.compile
    calls = []

    def compile_eagerly(model, **kwargs):
        calls.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    summary = Trainer(spec_of(tmp_path, ["+train.compile=true"]), tmp_path / "run", log=lambda *_: None).run()
    assert len(calls) == 1 and isinstance(calls[0], DistillGraph)
    assert summary["final"]["top1"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in records if r["kind"] == "train" for v in r["losses"].values())


class _Probe(Trainer):
    """A Trainer that records what the student's first convolution receives and holds."""

    seen: list

    def _prepare(self) -> None:
        super()._prepare()
        self.seen = []
        conv = self.graph.nodes["student"].stages[0][0]

        def hook(module, inputs, output):
            self.seen.append(
                {
                    "input_cl": inputs[0].is_contiguous(memory_format=torch.channels_last),
                    "weight_cl": module.weight.is_contiguous(memory_format=torch.channels_last),
                    "out_dtype": output.dtype,
                    "training": module.training,
                }
            )

        conv.register_forward_hook(hook)


def test_bf16_precision_runs_under_autocast(tmp_path: Path, fresh_accelerate) -> None:
    trainer = _Probe(spec_of(tmp_path, ["+train.precision=bf16"]), tmp_path / "run", log=lambda *_: None)
    trainer.run()
    trained = [s for s in trainer.seen if s["training"]]
    assert trained and all(s["out_dtype"] == torch.bfloat16 for s in trained)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["mixed_precision"] == "bf16" and info["distributed_type"] == "NO"


@pytest.mark.parametrize("loader", ["host", "device", "torchvision"])
def test_channels_last_reaches_weights_and_inputs(tmp_path: Path, loader: str) -> None:
    spec = spec_of(tmp_path, ["+train.channels_last=true", f"+data.loader={loader}", "+data.workers=0"])
    trainer = _Probe(spec, tmp_path / "run", log=lambda *_: None)
    trainer.run()
    trained = [s for s in trainer.seen if s["training"]]
    assert trained and all(s["input_cl"] and s["weight_cl"] for s in trained)


@pytest.mark.parametrize(("impl", "flag"), [("fused", "fused"), ("foreach", "foreach"), ("for-loop", "foreach")])
def test_optimizer_impl(tmp_path: Path, impl: str, flag: str) -> None:
    spec = spec_of(tmp_path, [f"+train.optimizer.impl={impl}"])
    graph = DistillGraph(spec, DataInfo(*data_info_of(spec.data)))
    stage = graph.plan.stages[0]
    graph.set_stage(stage)
    opt = build_optimizer(graph, stage, spec.stages[0].train, torch.device("cpu"))
    assert opt.defaults[flag] is (impl != "for-loop")
    before = [p.detach().clone() for p in graph.nodes["student"].parameters()]
    total, _ = graph(torch.randn(4, 3, 8, 8), torch.arange(4), torch.arange(4))
    total.backward()
    opt.step()  # the kernel runs on this device
    assert all(not torch.equal(a, b) for a, b in zip(before, graph.nodes["student"].parameters()))


HINT = """\
kdgraph: 1
name: hint
data: {dataset: synthetic, size: 32, test_size: 16, image_size: 8, channels: 3, classes: 4, batch_size: 8}
nodes:
  teacher: {net: mlp, hidden: [12], frozen: true}
  student: {net: mlp, hidden: [12]}
edges:
  - {loss: ce, from: data.label, to: student.logits}
  - {loss: mse, from: teacher.pooled, to: student.pooled}
stages:
  - {name: hint, edges: ["mse:teacher->student"], epochs: 1}
  - {name: full, edges: ["mse:teacher->student", "ce:data->student"], epochs: 1}
train: {progress: false}
deploy: student.logits
"""


def test_parameters_no_loss_reaches_are_frozen_for_that_stage(tmp_path: Path) -> None:
    path = tmp_path / "hint.yaml"
    path.write_text(HINT)
    spec = load_spec(path)
    info = DataInfo(*data_info_of(spec.data))
    probe = dry_run(spec, info)
    hint, full = probe.plan.stages
    assert probe.gradless[hint.index] == ["nodes.student.fc.weight", "nodes.student.fc.bias"]
    assert probe.gradless[full.index] == []
    graph = DistillGraph(spec, info)
    graph.gradless = probe.gradless
    graph.set_stage(hint)
    opt = build_optimizer(graph, hint, spec.stages[0].train, torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(graph.nodes["student"].fc.weight) not in in_opt and not graph.nodes["student"].fc.weight.requires_grad
    graph.set_stage(full)
    assert graph.nodes["student"].fc.weight.requires_grad
