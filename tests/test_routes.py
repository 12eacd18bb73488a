"""DOT's update (separate momenta for the task and distillation gradients) on tiny models, two steps.

The reference is DOT's formula written out here with plain tensors (Zhao, Song, Qiu, ICCV 2023,
arXiv:2307.08436; mdistiller's engine/dot.py): v_task = mu_task v_task + (g_task + wd theta),
v_kd = mu_kd v_kd + g_kd (each v = its d on the first step), theta -= lr (v_task + v_kd); a parameter
that only one of the two losses reaches uses the mean momentum (mu_task + mu_kd) / 2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdgraph.graph import DataInfo, DistillGraph
from kdgraph.routes import RoutedSGD
from kdgraph.spec import load_spec
from kdgraph.train import build_optimizer

from .conftest import GRAPHS

LR, WD, MU_TASK, MU_KD = 0.1, 5e-4, 0.825, 0.975


def _reference_two_steps(theta: dict[str, torch.Tensor], grads: list[dict[str, dict[str, torch.Tensor]]]):
    """theta after two DOT steps; grads[step][route][name] (a route missing a name did not reach it)."""
    theta = {k: v.clone() for k, v in theta.items()}
    buf: dict[tuple[str, str], torch.Tensor] = {}
    for step in grads:
        new = {}
        for name, value in theta.items():
            reached = [r for r in ("task", "kd") if name in step[r]]
            update = torch.zeros_like(value)
            for i, route in enumerate(reached):
                d = step[route][name] + (WD * value if i == 0 else 0.0)  # decay once, on the first route
                mu = {"task": MU_TASK, "kd": MU_KD}[route] if len(reached) == 2 else (MU_TASK + MU_KD) / 2
                buf[name, route] = d.clone() if (name, route) not in buf else mu * buf[name, route] + d
                update = update + buf[name, route]
            new[name] = value - LR * update
        theta = new
    return theta


def test_routed_sgd_is_dots_formula_including_single_route_parameters() -> None:
    torch.manual_seed(0)
    shared = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    task_only = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    kd_only = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    params = {"shared": shared, "task_only": task_only, "kd_only": kd_only}
    start = {k: v.detach().clone() for k, v in params.items()}
    opt = RoutedSGD(list(params.values()), lr=LR, momentum=MU_TASK, weight_decay=WD, routes={"dist": MU_KD})
    recorded = []
    for step in range(2):
        x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        h = x @ shared
        task = ((h * task_only).sum(1) - 1.0).pow(2).mean()
        kd = (h - kd_only).pow(2).mean() * 0.5
        g_task = dict(zip(["shared", "task_only"], torch.autograd.grad(task, [shared, task_only], retain_graph=True)))
        g_kd = dict(zip(["shared", "kd_only"], torch.autograd.grad(kd, [shared, kd_only], retain_graph=True)))
        recorded.append({"task": g_task, "kd": g_kd})
        opt.backward_routes({"main": task, "dist": kd})
        assert all(p.grad is None for p in params.values())  # gradients are kept per route, not summed
        opt.step()
    expected = _reference_two_steps(start, recorded)
    for name, p in params.items():
        assert torch.allclose(p.detach(), expected[name], rtol=0, atol=1e-12), name
    # the buffers are per route: a checkpoint carries both, and they differ
    state = opt.state_dict()["state"][0]
    assert {"momentum_buffer_main", "momentum_buffer_dist"} <= set(state)
    assert not torch.equal(state["momentum_buffer_main"], state["momentum_buffer_dist"])


def test_dot_graph_routes_ce_and_kd_into_their_own_momenta() -> None:
    """graphs/dot.yaml's edges and optimizer on MLPs: the graph splits the losses by route, the update is DOT's."""
    overrides = ["nodes.teacher.net=mlp", "nodes.student.net=mlp", "~nodes.teacher.init", "vars.lr=0.1",
                 "++data.dataset=synthetic", "++data.image_size=4", "++data.channels=1", "++data.classes=5"]
    spec = load_spec(GRAPHS / "dot.yaml", overrides)
    assert spec.edge("kd").optim == "dist" and spec.edge("ce").optim is None
    torch.manual_seed(0)
    graph = DistillGraph(spec, DataInfo(5, 1, 4)).double()
    stage = graph.plan.stages[0]
    graph.set_stage(stage)
    opt = build_optimizer(graph, stage, spec.stages[0].train, torch.device("cpu"))
    assert isinstance(opt, RoutedSGD) and opt.route_momentum == {"dist": pytest.approx(MU_KD)}
    assert opt.param_groups[0]["momentum"] == pytest.approx(MU_TASK)
    student, teacher = graph.nodes["student"], graph.nodes["teacher"]
    names = [n for n, _ in student.named_parameters()]
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    recorded = []
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=gen)
        y = torch.randint(0, 5, (6,), generator=gen)
        # the two losses by hand: 0.1 CE and 0.9 * 16 * KL(softmax(t/4) || softmax(s/4))
        s, t = student(x), teacher(x).detach()
        ce = 0.1 * F.cross_entropy(s, y)
        kd = 0.9 * 16 * F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
        params = list(student.parameters())
        g_task = dict(zip(names, torch.autograd.grad(ce, params, retain_graph=True)))
        g_kd = dict(zip(names, torch.autograd.grad(kd, params)))
        recorded.append({"task": g_task, "kd": g_kd})
        total, _ = graph(x, y, torch.arange(6))
        assert set(graph.route_totals) == {"main", "dist"}
        assert torch.allclose(graph.route_totals["main"] + graph.route_totals["dist"], total)
        opt.backward_routes(graph.route_totals)
        opt.step()
    expected = _reference_two_steps(start, recorded)
    for name, p in student.named_parameters():
        assert torch.allclose(p.detach(), expected[name], rtol=0, atol=1e-12), name


def test_an_unknown_route_is_named_with_its_fix() -> None:
    from kdgraph.errors import SpecError

    with pytest.raises(SpecError, match=r"edges\[1\]\.optim: route 'dsit'.*add dsit: \{momentum"):
        load_spec(GRAPHS / "dot.yaml", ["edges.1.optim=dsit"])


@pytest.mark.slow
def test_dot_run_keeps_both_momenta_and_resumes_bitwise(tmp_path) -> None:
    """graphs/dot.yaml through the trainer: both route buffers are checkpointed and a resumed run is identical."""
    from kdgraph.train import Interrupted, Trainer

    from .conftest import SMOKE

    overrides = [*SMOKE, "++data.image_size=8", "++data.size=16", "++train.limit_batches=4", "train.epochs=2",
                 "~nodes.teacher.init", "nodes.teacher.net=resnet8", "nodes.student.net=resnet8"]
    spec = load_spec(GRAPHS / "dot.yaml", overrides)
    Trainer(spec, tmp_path / "straight", log=lambda *_: None).run()
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "resumed", log=lambda *_: None, stop_after=5).run()
    Trainer(spec, tmp_path / "resumed", log=lambda *_: None, resume=True).run()
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)["graph"]
    b = torch.load(tmp_path / "resumed" / "final.pt", weights_only=True)["graph"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpts = sorted((tmp_path / "resumed" / "checkpoints").glob("*.pt"))
    state = torch.load(ckpts[-1], weights_only=True)["optimizer"]["state"]
    assert any({"momentum_buffer_main", "momentum_buffer_dist"} <= set(s) for s in state.values())
