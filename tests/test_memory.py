"""The plan's memory estimate (a step on fake tensors) against torch's measured peak on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from kdgraph.check import spec_data_info as data_info
from kdgraph.graph import DistillGraph
from kdgraph.memory import estimate_memory
from kdgraph.spec import load_spec
from kdgraph.train import build_optimizer

# SLKD's shape on small nets: a frozen teacher, two trained peers mixed, a student
GRAPH = """\
kdgraph: 1
name: mem
data: {dataset: synthetic, size: 32, test_size: 8, image_size: 16, channels: 3, classes: 10, batch_size: 16}
nodes:
  teacher: {net: resnet8, frozen: true}
  slt1:    {net: resnet8}
  slt2:    {net: resnet8}
  student: {net: resnet8}
  slt:     {op: mix, in: [slt1.logits, slt2.logits], weights: [0.5, 0.5]}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9}
  - {loss: kd, from: slt.out, to: student.logits, weight: 2.7}
  - {loss: kd, from: teacher.logits, to: slt1.logits}
  - {loss: kd, from: teacher.logits, to: slt2.logits}
train:
  epochs: 1
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
deploy: student.logits
"""


def measured_peak(graph: DistillGraph, spec, batch: int) -> tuple[int, int]:
    """(peak of torch's CPU allocations above the between-steps level during one step, persistent bytes)."""
    stage = graph.plan.stages[0]
    graph.set_stage(stage)
    graph.train()
    optimizer = build_optimizer(graph, stage, spec.stages[0].train, torch.device("cpu"))
    info = graph.data_info
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, info.channels, info.image_size, info.image_size, generator=g)
    y = torch.randint(0, info.num_classes, (batch,), generator=g)

    def step() -> None:
        total, _ = graph(x, y, torch.arange(batch))
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    persistent = sum(t.numel() * t.element_size() for t in [*graph.parameters(), *graph.buffers(), *state])
    return peak, persistent


def test_estimated_step_peak_is_within_a_quarter_of_the_measured_one(tmp_path: Path) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(GRAPH)
    spec = load_spec(path)
    info = data_info(spec)
    (est,) = estimate_memory(spec, info)
    torch.manual_seed(0)
    real = DistillGraph(spec, info)
    peak, persistent = measured_peak(real, spec, 16)
    assert est.batch == 16
    assert est.persistent == persistent  # parameters, buffers, momentum: exact
    assert abs(est.peak - peak) <= 0.25 * peak, (est.peak, peak)
    by_node = {n.name: n for n in est.nodes}
    # the frozen teacher runs under no_grad: it keeps only its logits, the trained nets their activations
    assert by_node["teacher"].activations < 0.05 * by_node["slt1"].activations
    assert by_node["slt1"].activations == by_node["slt2"].activations > 0
    tensors = [*real.nodes["slt1"].parameters(), *real.nodes["slt1"].buffers()]
    assert by_node["slt1"].params == sum(t.numel() * t.element_size() for t in tensors)


def test_activation_memory_grows_with_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(GRAPH)
    spec = load_spec(path)
    small, large = estimate_memory(spec, data_info(spec), 8)[0], estimate_memory(spec, data_info(spec), 32)[0]
    assert small.persistent == large.persistent
    ratio = {n.name: m.activations / n.activations for n, m in zip(small.nodes, large.nodes) if n.name == "student"}
    assert 3.5 <= ratio["student"] <= 4.5  # activations are linear in the batch


def test_plan_prints_the_estimate_per_node_and_the_peak(tmp_path: Path, capsys) -> None:
    from kdgraph.cli import main

    path = tmp_path / "mem.yaml"
    path.write_text(GRAPH)
    assert main(["plan", str(path), "--batch", "32"]) == 0
    out = capsys.readouterr().out
    assert "memory at batch 32" in out and "step peak" in out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("    slt1 ")]
    assert row[2] == "MiB" and row[4] == "MiB" and float(row[3]) > 0  # parameters and activations of slt1
    assert main(["plan", str(path), "--no-memory"]) == 0
    assert "memory at batch" not in capsys.readouterr().out


def test_plan_estimates_once_per_graph_batch_and_code(tmp_path: Path, capsys, monkeypatch) -> None:
    """A second plan of the same graph reads the estimate from kdgraph's cache; a new batch or graph does not."""
    from kdgraph import memory_cache
    from kdgraph.cli import main

    calls: list[int | None] = []

    def counting(spec, info, batch=None):
        calls.append(batch)
        return estimate_memory(spec, info, batch)

    monkeypatch.setattr(memory_cache, "estimate_memory", counting)
    path = tmp_path / "mem.yaml"
    path.write_text(GRAPH)
    outputs = []
    for args in (["--batch", "8"], ["--batch", "8"], ["--batch", "4"], ["--batch", "8", "nodes.student.net=resnet14"]):
        assert main(["plan", str(path), *args]) == 0
        outputs.append(capsys.readouterr().out)
    assert calls == [8, 4, 8]  # the repeat came from the cache
    assert outputs[0] == outputs[1]  # and reads exactly as the estimate
    assert "memory at batch 4" in outputs[2] and outputs[3] != outputs[0]
