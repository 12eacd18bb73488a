"""Gradient routes: each edge's gradient reaches the optimizer through a named route with its own momentum.

    edges:
      - {loss: ce, from: data.label, to: student.logits}                 # route "main"
      - {loss: kd, from: teacher.logits, to: student.logits, optim: dist}
    train:
      optimizer: {type: sgd, lr: 0.05, momentum: 0.825, weight_decay: 5.0e-4,
                  routes: {dist: {momentum: 0.975}}}

This is DOT, the distillation-oriented trainer (Zhao, Song, Qiu, ICCV 2023, arXiv:2307.08436): with
g_r the gradient of route r's weighted losses, the update of a parameter is

    d_main = g_main + wd * theta                (weight decay once, on the first route that reaches theta)
    v_r    = mu_r * v_r + d_r                   (v_r = d_r on its first step; one buffer per route)
    theta  = theta - lr * sum_r v_r

where mu_r is the route's own momentum when more than one route reaches theta in this step, and the
mean of all routes' momenta when only one does (mdistiller's engine/dot.py: a parameter that only the
task loss, or only the distillation loss, reaches gets (mu_task + mu_kd) / 2). DOT's CIFAR recipe:
mu_main = 0.9 - 0.075, mu_dist = 0.9 + 0.075. One route ("main") is plain SGD with momentum.

Each route costs one backward pass (``backward_routes``, the graph kept between them), as in
mdistiller. mdistiller skips the weight decay on the first step of a parameter that only the
distillation loss reaches; kdgraph applies it (the formula above) — the only difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import Problem

MAIN = "main"


class RoutedSGD(torch.optim.Optimizer):
    """SGD with one momentum buffer per gradient route (DOT); see the module docstring for the update.

    ``routes``: route name -> momentum for every route but ``main``, whose momentum is each group's
    ``momentum``. Call ``backward_routes({route: loss, ...})`` instead of ``loss.backward()``, then
    ``step()``.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 routes: Mapping[str, float] | None = None):
        self.route_momentum = {str(k): float(v) for k, v in (routes or {}).items()}
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def backward_routes(
        self, losses: Mapping[str, torch.Tensor], backward: Callable[..., None] | None = None
    ) -> None:
        """Backward each route's loss separately and keep its gradients for ``step`` (p.grad is left empty)."""
        backward = backward or (lambda loss, **kw: loss.backward(**kw))
        names = list(losses)
        for i, route in enumerate(names):
            if route != MAIN and route not in self.route_momentum:
                raise ValueError(f"gradient route {route!r} has no momentum: add it under optimizer.routes")
            if not losses[route].requires_grad:
                continue
            backward(losses[route], retain_graph=i < len(names) - 1)
            for p in self._params():
                if p.grad is not None:
                    self.state[p].setdefault("grads", {})[route] = p.grad
                    p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            momenta = {MAIN: group["momentum"], **self.route_momentum}
            shared = sum(momenta.values()) / len(momenta)
            for p in group["params"]:
                state = self.state[p]
                grads = state.pop("grads", {})
                if p.grad is not None:  # a plain backward() outside the routes counts as main
                    grads[MAIN] = grads[MAIN] + p.grad if MAIN in grads else p.grad
                if not grads:
                    continue
                decay_on = next(r for r in (MAIN, *self.route_momentum) if r in grads)
                update = torch.zeros_like(p)
                for route, g in grads.items():
                    d = g.add(p, alpha=group["weight_decay"]) if route == decay_on and group["weight_decay"] else g
                    mu = momenta[route] if len(grads) > 1 else shared
                    key = f"momentum_buffer_{route}"
                    if mu == 0:
                        buf = d
                    elif key not in state:
                        buf = state[key] = torch.clone(d).detach()
                    else:
                        buf = state[key].mul_(mu).add_(d)
                    update.add_(buf)
                p.add_(update, alpha=-group["lr"])
        return loss


def routed_optimizer(groups: list[dict[str, Any]], cfg: Mapping[str, Any]) -> RoutedSGD:
    """The optimizer of a stage whose `optimizer:` names `routes:` (SGD only; checked by ``route_problems``)."""
    routes = {name: float((r or {}).get("momentum", cfg.get("momentum", 0.0))) for name, r in cfg["routes"].items()}
    for g in groups:  # torch's SGD keys that RoutedSGD does not use
        g.pop("nesterov", None)
    return RoutedSGD(groups, lr=float(cfg["lr"]), momentum=float(cfg.get("momentum", 0.0)),
                     weight_decay=float(cfg.get("weight_decay", 0.0)), routes=routes)


def route_problems(spec: Any) -> list[Problem]:
    """Every edge's `optim:` route exists in the optimizer of each stage that trains it; routes need SGD."""
    problems: list[Problem] = []
    for stage in spec.stages:
        cfg = stage.train.get("optimizer") or {}
        routes = cfg.get("routes") or {}
        where = ("stages", stage.index, "train", "optimizer") if spec.doc.get("stages") else ("train", "optimizer")
        if routes and cfg.get("type", "sgd") != "sgd":
            problems.append(spec.problem((*where, "routes"), "gradient routes need type: sgd", "use type: sgd"))
        if routes and cfg.get("nesterov"):
            problems.append(spec.problem((*where, "nesterov"), "gradient routes use plain momentum",
                                         "drop nesterov or the routes"))
        by_name = {e.name: e for e in spec.edges}
        for edge in (by_name[n] for n in stage.edges if n in by_name):  # unknown names: checked elsewhere
            route = getattr(edge, "optim", None)
            if route and route != MAIN and route not in routes:
                known = ", ".join(sorted(routes)) or "none"
                fix = f"add {route}: {{momentum: ...}} under {'.'.join(map(str, where))}.routes"
                problems.append(spec.problem(("edges", edge.index, "optim"),
                                             f"route {route!r} is not among the optimizer's routes ({known})", fix))
    return problems


def uses_routes(optimizer: Any) -> bool:
    """Whether a (possibly wrapped) optimizer takes its gradients route by route."""
    return isinstance(getattr(optimizer, "optimizer", optimizer), RoutedSGD)
