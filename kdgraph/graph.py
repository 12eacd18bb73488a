"""DistillGraph: the planned graph as one nn.Module, walked like a torch.fx Interpreter.

Each node runs once per step, in planned order, under ``no_grad`` when nothing downstream needs
its gradient; each loss is computed right after the last node it reads; every value is dropped
after its last use. Errors name the node or edge that failed.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .catalog import load_builtins
from .datasets.base import DataInfo
from .errors import NodeError, Problem, SpecError, error_of, first_line, sort_problems
from .fuse import FusedPeers, fuse_peers
from .losses._util import float32
from .nets.base import PortNet
from .output_cache import MIN_ROWS
from .plan import NodeFacts, Plan, StagePlan, Step, build_program, make_plan, port_problems
from .registry import LOSSES, NETS, OPS, PortInfo
from .spec import ENGINE_ARGS, EdgeSpec, GraphSpec, NodeSpec
from .spec.dataflow import DATA, dataflow_graph, needed, node_of, node_refs, topo_order
from .spec.digraph import strongly_connected_components, topological_order
from .views import view_names, view_port


def _accepts(obj: Any, name: str) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(target).parameters
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _schedules_to_objects(params: dict[str, Any]) -> dict[str, Any]:
    from .schedule import Schedule, is_schedule_spec

    return {k: Schedule.from_spec(v) if is_schedule_spec(v) else v for k, v in params.items()}


class DistillGraph(nn.Module):
    """Every node of a graph file as one module; ``forward`` runs one training step's program."""

    def __init__(self, spec: GraphSpec, data: DataInfo):
        super().__init__()
        load_builtins()
        self.spec, self.data_info = spec, data
        self.nodes = nn.ModuleDict()
        self._taps: dict[str, dict[str, torch.Tensor]] = {}
        self.facts: dict[str, NodeFacts] = {}
        problems = self._build_nodes(topo_order(spec))
        ports = port_problems(spec, self.facts)
        if problems or ports:
            raise error_of(sort_problems(problems + ports))
        self.plan: Plan = make_plan(spec, self.facts)
        self._loss_fns = {e.name: LOSSES.get(e.loss).obj for e in spec.edges}
        self._loss_takes_labels = {e.name: _accepts(LOSSES.get(e.loss).obj, "labels") for e in spec.edges}
        self._edges = {e.name: e for e in spec.edges}
        self.routed = any(e.optim for e in spec.edges)  # per-route loss totals for DOT (kdgraph/routes.py)
        self.route_totals: dict[str, torch.Tensor] | None = None
        self._view_ports = {v: view_port(v) for v in view_names(spec.data)}
        self._epoch_params: dict[str, dict[str, Any]] = {}
        self._weights: dict[str, float] = {}
        # scheduled weights live in 0-dim tensors updated in place, so a torch.compile'd step is not
        # recompiled each epoch; constant weights stay Python floats (no tensor op when 1.0)
        self._weight_slots: dict[str, float | torch.Tensor] = {}
        self._bound_programs: dict[tuple, list[tuple]] = {}  # programs bound to closures, per stage
        self._output_caches: dict[tuple[int, str], Any] = {}  # (stage index, node) -> OutputCache (train.cache)
        self._fusions: dict[int, list[FusedPeers]] = {}  # stage index -> peers run as one call (train.fuse)
        self._fuse_mode, self._fuse_log = "off", None
        # per stage index, trainable parameters that no loss reaches (found by dry_run): frozen there
        self.gradless: dict[int, list[str]] = {}
        self.stage: StagePlan = self.plan.stages[0]
        self.set_epoch(1)

    def _build_nodes(self, order: list[str], skip: set[str] = frozenset()) -> list[Problem]:
        """Build the nodes in `order` whose inputs are built; every node's problems, not just the first."""
        problems: list[Problem] = []
        for name in order:
            node = self.spec.nodes[name]
            needs = [node_of(p) for p in node.inputs] + node_refs(self.spec, name)
            if name in skip or any(n not in self.facts and n != DATA for n in needs):
                continue  # already reported, or fed by a node that could not be built
            try:
                module, ports = self._build(node, self.facts)
            except SpecError as e:
                problems += e.problems
                continue
            self.nodes[name] = module
            stops = bool(getattr(module, "stops_gradient", False)) or node.type == "detach"
            self.facts[name] = NodeFacts(ports, sum(p.numel() for p in module.parameters()), stops)
        return problems

    @classmethod
    def problems_of(cls, spec: GraphSpec, data: DataInfo, known: list[Problem]) -> list[Problem]:
        """More problems of a spec that already has `known` ones: build what can be built, check its ports.

        Nodes and ports with a known problem, in a cycle or fed by such a node are left alone, so
        nothing is reported twice and no problem is a mere echo of another.
        """
        load_builtins()
        graph = cls.__new__(cls)
        nn.Module.__init__(graph)
        graph.spec, graph.data_info = spec, data
        graph.nodes, graph._taps, graph.facts = nn.ModuleDict(), {}, {}
        blamed = {p.where for p in known}
        blamed_nodes = {p.node for p in known if p.node}  # a node with a known problem is not built again

        g = dataflow_graph(spec)
        looped = {n for c in strongly_connected_components(g) for n in c if len(c) > 1 or g.has_edge(n, n)}
        skip = {n for n, node in spec.nodes.items() if n in blamed_nodes or not _registered(node)}
        order = [n for n in topological_order(g.subgraph(set(g) - looped)) if n != DATA]
        found = graph._build_nodes(order, skip)
        return found + [p for p in port_problems(spec, graph.facts) if p.where not in blamed]

    # ------------------------------------------------------------------ building

    def _build(self, node: NodeSpec, facts: dict[str, NodeFacts]) -> tuple[nn.Module, dict[str, PortInfo]]:
        registry = NETS if node.kind == "net" else OPS
        entry = registry.get(node.type)
        kwargs = _schedules_to_objects(dict(node.params)) if node.kind == "op" else dict(node.params)
        engine = {
            "num_classes": self.data_info.num_classes,
            "in_channels": self.data_info.channels,
            "image_size": self.data_info.image_size,
            "num_train": self.data_info.num_train,
        }
        if node.kind == "op":
            engine["in_info"] = [self._port_info(p, facts) for p in node.inputs]
            engine["nodes"] = _NodeView(self.nodes)
        for key, value in engine.items():
            if key not in kwargs and key in entry.parameters():
                kwargs[key] = value
        try:
            module = entry.obj(**kwargs)
        except Exception as e:  # a constructor's complaint is the user's bad parameter
            shown = {k: v for k, v in kwargs.items() if k not in ENGINE_ARGS}
            raise SpecError(
                [
                    self.spec.problem(
                        ("nodes", node.name),
                        f"cannot build {node.kind} {node.type!r} with {shown}: {type(e).__name__}: {e}",
                    )
                ]
            ) from None
        if node.kind == "net":
            ports = (
                module.port_info()
                if isinstance(module, PortNet)
                else {"logits": PortInfo("logits", self.data_info.num_classes)}
            )
        else:
            ports = (
                module.port_info()
                if hasattr(module, "port_info")
                else {o: PortInfo() for o in getattr(module, "outputs", ("out",))}
            )
        ports = dict(ports)
        for tap, path in node.taps.items():
            try:
                sub = module.get_submodule(path)
            except AttributeError:
                names = [n for n, _ in module.named_modules() if n]
                from .errors import did_you_mean

                raise SpecError(
                    [
                        self.spec.problem(
                            ("nodes", node.name, "taps", tap),
                            f"no module {path!r} in {node.type!r}",
                            did_you_mean(path, names),
                        )
                    ]
                ) from None
            sub.register_forward_hook(self._tap_hook(node.name, tap))
            ports[tap] = PortInfo()
        return module, ports

    def _port_info(self, port: str, facts: dict[str, NodeFacts]) -> PortInfo:
        node, name = port.split(".", 1)
        if node == DATA:
            if name == "image" or name.endswith(".image"):
                return PortInfo("map", self.data_info.channels, 1)
            return PortInfo("any")
        return facts[node].ports.get(name, PortInfo()) if node in facts else PortInfo()

    def _tap_hook(self, node: str, tap: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            # zoo blocks may return (out, preact) as the reference code does: the tap is the output
            self._taps.setdefault(node, {})[tap] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    # ------------------------------------------------------------------ per stage and epoch

    def set_stage(self, stage: StagePlan) -> None:
        """Trainable nodes train; every other node with parameters is frozen and in eval mode."""
        self.stage = stage
        self._bound_programs.clear()
        trainable = set(stage.trainable)
        for name, module in self.nodes.items():
            has_params = self.facts[name].params > 0
            train = name in trainable or (not has_params and not self.spec.nodes[name].frozen)
            module.requires_grad_(name in trainable)
            module.train(train)
        for pname in self.gradless.get(stage.index, ()):
            self.get_parameter(pname).requires_grad_(False)

    def train(self, mode: bool = True) -> DistillGraph:
        """train() restores the stage's modes (frozen nodes stay in eval); eval() puts all in eval."""
        self.training = mode
        if mode:
            self.set_stage(self.stage)
        else:
            for module in self.nodes.values():
                module.train(False)
        return self

    def set_epoch(self, epoch: int) -> None:
        """Evaluate scheduled loss weights and parameters for this epoch (epochs count from 1)."""
        from .schedule import Schedule, is_schedule_spec

        for e in self.spec.edges:
            scheduled = is_schedule_spec(e.weight)
            weight = Schedule.from_spec(e.weight).at(epoch) if scheduled else float(e.weight)
            self._weights[e.name] = weight
            if not scheduled:
                self._weight_slots[e.name] = weight
            elif e.name in self._weight_slots:
                self._weight_slots[e.name].fill_(weight)
            else:
                self._weight_slots[e.name] = torch.tensor(weight)
            # updated in place: the bound loss closures hold these very dicts
            params = self._epoch_params.setdefault(e.name, {})
            params.clear()
            params.update(
                {
                    k: Schedule.from_spec(v).at(epoch) if is_schedule_spec(v) else v
                    for k, v in e.params.items()
                    if k not in e.port_params
                }
            )
        for module in self.nodes.values():
            if hasattr(module, "set_epoch"):
                module.set_epoch(epoch)

    def loss_weights(self) -> dict[str, float]:
        return dict(self._weights)

    # ------------------------------------------------------------------ walking

    def data_values(
        self, image: torch.Tensor, label: Any = None, index: Any = None, views: dict | None = None
    ) -> dict[str, Any]:
        """The data ports of a batch; a view the batch lacks (evaluation, export) is the plain image."""
        values: dict[str, Any] = {"data.image": image, "data.label": label, "data.index": index}
        for v, port in getattr(self, "_view_ports", {}).items():
            values[port] = views[v] if views and v in views else image
        return values

    def forward(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        index: torch.Tensor | None = None,
        variant: torch.Tensor | None = None,
        observe: Callable[[str, str, bool], None] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ):
        """One training step's forward: (weighted total loss, the stage's edge losses stacked, detached).

        Runs the stage's program bound to closures once (``bind``): per batch, only the tensor work
        and a few dict operations remain. `variant` is each sample's augmentation variant (the output
        cache's key with `index`). ``observe(kind, name, before)``, when given, is called before and
        after each node or loss step (the memory estimate uses it). `views`: the batch's named views
        (``data.<view>.image``).
        """
        values = self.data_values(image, label, index, views)
        values[_CACHE_KEYS] = (index, variant)  # beside the ports: the plan never frees it
        amp = _autocast_on(image.device.type)
        total: torch.Tensor | None = None
        losses: list[torch.Tensor] = []
        routes: dict[str, torch.Tensor] | None = {} if self.routed else None  # DOT: kdgraph/routes.py
        for run, weight, step in self._bound("train", amp):
            if observe is not None:
                observe(step.kind, step.name, True)
            try:
                out = run(values)
            except Exception as e:  # a plugin may raise anything: it is named, never a traceback
                raise self._step_error(step, values, e) from None
            if observe is not None:
                observe(step.kind, step.name, False)
            if weight is not None:  # a loss step
                losses.append(out)
                term = out if (weight.__class__ is float and weight == 1.0) else out * weight
                total = term if total is None else total + term
                if routes is not None:
                    route = self._edges[step.name].optim or "main"
                    routes[route] = term if route not in routes else routes[route] + term
        self.route_totals = routes
        if total is None:  # a stage without losses (fits only)
            return torch.zeros((), device=image.device), torch.zeros(0, device=image.device)
        with torch.no_grad():  # the metrics need no autograd node (stack promotes mixed dtypes)
            return total, torch.stack(losses)

    def loss_names(self, stage: StagePlan | None = None) -> list[str]:
        """Edge names in the order ``forward`` stacks their losses."""
        return [s.name for s in (stage or self.stage).program if s.kind == "loss"]

    @torch.no_grad()
    def evaluate(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stage's evaluated ports for a batch of images."""
        values = self.data_values(image)
        self.walk(self._bound("eval", False), values)
        return {p: values[p] for p in self.stage.eval_ports}

    @torch.no_grad()
    def outputs(
        self, image: torch.Tensor, ports: list[str], label: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Any ports for a batch (no gradient), e.g. for export checks and the dry run."""
        order = needed(self.plan.order, dataflow_graph(self.spec, refs=False), ports)
        program = build_program(self.spec, order, ports, [], lambda n: True, keep=ports)
        values = self.data_values(image, label)
        self.walk(self.bind(program, False), values)
        return {p: values[p] for p in ports}

    @torch.no_grad()
    def fit_batch(self, image: torch.Tensor, label: torch.Tensor) -> None:
        """Feed one batch to each node this stage fits (fit_step with its inputs)."""
        values = self.data_values(image, label)
        self.walk(self._bound("fit", False), values)
        for name in self.stage.fit:
            self.nodes[name].fit_step(*[values[p] for p in self.spec.nodes[name].inputs])

    def use_output_cache(self, node: str, cache: Any) -> None:
        """In this stage's training step, gather `node`'s ports from `cache` (an OutputCache) instead of
        running it; samples the cache lacks are computed and stored while `cache.lazy` (train.cache)."""
        self._output_caches[(self.stage.index, node)] = cache
        self._bound_programs.clear()

    def drop_output_caches(self) -> None:
        self._output_caches.clear()
        self._bound_programs.clear()

    def use_fusion(
        self, groups: list[tuple[str, ...]], mode: str, log: Callable[[str], None] | None = None
    ) -> list[str]:
        """Run each group of peers (``plan.fusable_peers``) as one call in this stage's training step.

        `mode` ``on`` keeps every group its first batch proves equal (kdgraph/fuse.py); ``auto`` also times
        fused against unfused there and keeps the faster. Returns why any group is not fused.
        """
        self._fusions.pop(self.stage.index, None)
        self._bound_programs.clear()
        self._fuse_mode, self._fuse_log = mode, log
        if mode == "off":
            return []
        # timed and proven outside torch.compile's graph; wrapped here, as the wrapper imports torch._dynamo
        self._decide = torch.compiler.disable(DistillGraph._decide_fusion)  # unbound: a deepcopy calls its own
        fused, refused = [], []
        for names in groups:
            made = fuse_peers(names, [self.nodes[n] for n in names])
            if isinstance(made, str):
                refused.append(f"{' + '.join(names)} not fused: {made}")
            else:
                fused.append(made)
        self._fusions[self.stage.index] = fused
        return refused

    @torch.no_grad()
    def node_outputs(self, node: str, image: torch.Tensor, ports: frozenset[str]) -> dict[str, torch.Tensor]:
        """`ports` (as `node.port`) of a net that reads the image, for a batch, in the node's current mode."""
        values: dict[str, Any] = {"data.image": image}
        self._node_closure(Step("node", node, no_grad=True, wanted=frozenset(ports)))(values)
        return {f"{node}.{p}": values[f"{node}.{p}"] for p in ports}

    def walk(self, ops: list[tuple], values: dict[str, Any]) -> None:
        """Run bound steps (``bind``) over `values`, the port -> tensor dict; errors name the node or edge."""
        for run, _weight, step in ops:
            try:
                run(values)
            except Exception as e:  # a plugin may raise anything: it is named, never a traceback
                raise self._step_error(step, values, e) from None

    # ------------------------------------------------------------------ the program as closures

    def _bound(self, kind: str, amp: bool) -> list[tuple]:
        """The stage's program of `kind` (train, eval, fit) as closures, built once per stage."""
        key = (self.stage.index, kind, amp)
        ops = self._bound_programs.get(key)
        if ops is None:
            program = {"train": self.stage.program, "eval": self.stage.eval_program, "fit": self.stage.fit_program}
            ops = self._bound_programs[key] = self.bind(program[kind], amp, cached=kind == "train")
        return ops

    def bind(self, program: list[Step], amp: bool, cached: bool = False) -> list[tuple]:
        """A program as (run(values), loss weight or None, step) per step, for ``walk``.

        The walker's decisions are taken here once, not per batch. With `cached`, nodes the stage's
        output caches hold gather their ports instead of running (train.cache).
        """
        ops = []
        fused = self._fused_steps(program) if cached else {}
        for step in program:
            cache = self._output_caches.get((self.stage.index, step.name)) if cached else None
            if step.name in fused and step.kind == "node":
                ops.append((fused[step.name], None, step))
            elif step.kind == "node" and cache is not None:
                ops.append((self._cached_closure(step, cache), None, step))
            elif step.kind == "node":
                ops.append((self._node_closure(step), None, step))
            else:
                edge = self._edges[step.name]
                ops.append((self._loss_closure(edge, step.free, amp), self._weight_slots[edge.name], step))
        return ops

    def fusion_notes(self) -> list[str]:
        """What the first batch decided for each of this stage's fused groups (empty before it)."""
        return [f.note for f in self._fusions.get(self.stage.index, []) if f.decided]

    def _fused_steps(self, program: list[Step]) -> dict[str, Callable]:
        """Per node step of a fused group: the first peer's runs the stacked call, the others only free."""
        out: dict[str, Callable] = {}
        for fused in self._fusions.get(self.stage.index, []):
            if (fused.decided and not fused.enabled) or any(
                (self.stage.index, n) in self._output_caches for n in fused.names
            ):
                continue
            steps = {s.name: s for s in program if s.kind == "node" and s.name in fused.names}
            if len(steps) != fused.k:
                continue
            first, *rest = [s for s in program if s.name in steps]
            out[first.name] = self._fused_closure(fused, steps, first)
            for step in rest:
                out[step.name] = _free_closure(step.free)
        return out

    def _fused_closure(self, fused: FusedPeers, steps: dict[str, Step], first: Step):
        """The first peer's step: every peer's wanted ports from one stacked call (or each alone, if refused)."""
        key, no_grad, free = self.spec.nodes[first.name].inputs[0], first.no_grad, first.free
        union = frozenset().union(*(s.wanted for s in steps.values()))
        outs = [tuple((port, f"{n}.{port}") for port in sorted(steps[n].wanted)) for n in fused.names]
        alone = [self._node_closure(Step("node", n, no_grad=no_grad, wanted=steps[n].wanted)) for n in fused.names]

        def run(values: dict[str, Any]) -> None:
            if not fused.decided:
                self._decide(self, fused, values[key], union, no_grad)
            if fused.enabled:
                with torch.no_grad() if no_grad else contextlib.nullcontext():
                    parts = fused.ports(values[key], union)
                for part, names in zip(parts, outs):
                    for port, k in names:
                        values[k] = part[port]
            else:  # refused at the first batch: this once each peer alone, from the next step the plain program
                for call in alone:
                    call(values)
            for k in free:
                values.pop(k, None)

        return run

    def _decide_fusion(self, fused: FusedPeers, x: torch.Tensor, wanted: frozenset[str], no_grad: bool) -> None:
        """At the first batch: prove the stacked call equal, and under ``auto`` keep it only if faster."""
        names = " + ".join(fused.names)
        why = fused.prove(x, wanted)
        if why:
            fused.enabled, note = False, f"{names} not fused: {why}"
        elif self._fuse_mode == "auto":
            t_fused, t_alone = fused.time_both(x, wanted, grad=not no_grad)
            fused.enabled = _agreed(t_fused < t_alone, x.device)
            verdict = "fused" if fused.enabled else "not fused (slower)"
            note = f"{names} {verdict}: {t_fused * 1e3:.2f} ms stacked, {t_alone * 1e3:.2f} ms alone per pass"
        else:
            note = f"{names} fused (equal to each net alone within 1e-5)"
        fused.decided, fused.note = True, note
        if not fused.enabled:
            self._bound_programs.clear()  # the next step binds the plain program
        if self._fuse_log is not None:
            self._fuse_log(f"  train.fuse: {note}")

    def _node_closure(self, step: Step):
        name, node, module = step.name, self.spec.nodes[step.name], self.nodes[step.name]
        keys, free, no_grad = tuple(node.inputs), step.free, step.no_grad
        outs = tuple((port, f"{name}.{port}") for port in sorted(step.wanted))
        taps = self._taps if node.taps else None
        if node.kind == "net" and isinstance(module, PortNet) and len(keys) == 1:
            # the common case, kept to one call: a zoo net on one input
            forward_ports, wanted, key = module.forward_ports, step.wanted, keys[0]

            def call(values: dict[str, Any]) -> dict[str, Any]:
                return forward_ports(values[key], wanted)
        elif node.kind == "net":

            def call(values: dict[str, Any]) -> dict[str, Any]:
                return {"logits": module(*[values[k] for k in keys])}
        else:

            def call(values: dict[str, Any]) -> dict[str, Any]:
                result = module(*[values[k] for k in keys])
                return result if isinstance(result, dict) else {"out": result}

        def run(values: dict[str, Any]) -> None:
            if no_grad:
                with torch.no_grad():
                    out = call(values)
            else:
                out = call(values)
            if taps is not None:
                out = {**out, **taps.pop(name, {})}
            try:
                for port, key in outs:
                    values[key] = out[port]
            except KeyError as e:
                raise NodeError(
                    f"node {name!r}", f"did not produce port {e.args[0]!r} (it produced {sorted(out)})", node=name
                ) from None
            for key in free:
                values.pop(key, None)

        return run

    def _cached_closure(self, step: Step, cache: Any):
        """A node step that gathers its ports from the output cache by (sample index, augmentation variant)."""
        compute, free = self._node_closure(Step("node", step.name, no_grad=True, wanted=step.wanted)), step.free
        keys_of = tuple(f"{step.name}.{port}" for port in sorted(step.wanted))

        def run(values: dict[str, Any]) -> None:
            image = values["data.image"]
            keys = cache.keys(*values[_CACHE_KEYS])
            if cache.lazy:  # computes only what is missing; one read-back of the count per step
                missing = cache.missing(keys)
                if len(missing):
                    # never fewer than MIN_ROWS (kernels pick other algorithms for a handful of rows), topped
                    # up with stored samples of the batch, whose values are kept
                    rows = _top_up(missing, len(keys), MIN_ROWS)
                    part = {"data.image": image[rows]}
                    compute(part)
                    cache.put(keys[missing], {k: part[k][: len(missing)] for k in keys_of})
            values.update(cache.get(keys, image.device))
            for key in free:
                values.pop(key, None)

        return run

    def _loss_closure(self, edge: EdgeSpec, free: tuple[str, ...], amp: bool):
        fn = self._loss_fns[edge.name]
        static = self._epoch_params[edge.name]
        dynamic = dict(edge.port_params)
        if self._loss_takes_labels[edge.name]:
            dynamic["labels"] = "data.label"
        target_port, pred_port, detach, weight_port = edge.target, edge.pred, edge.detach, edge.sample_weight
        # the library's float32 wrapper only upcasts and turns autocast off: a no-op without autocast
        raw = fn.__wrapped__ if (not amp and not dynamic and not weight_port and _is_float32_wrapper(fn)) else None

        def run(values: dict[str, Any]) -> torch.Tensor:
            pred, target = values[pred_port], values[target_port]
            if detach and isinstance(target, torch.Tensor) and target.requires_grad:
                target = target.detach()
            if raw is not None and pred.dtype not in _LOW and getattr(target, "dtype", None) not in _LOW:
                loss = raw(pred, target, **static)
            elif dynamic or weight_port:
                kwargs = dict(static)
                for k, port in dynamic.items():
                    kwargs[k] = values[port]
                if weight_port:
                    kwargs["sample_weight"] = values[weight_port].detach()
                loss = fn(pred, target, **kwargs)
            else:
                loss = fn(pred, target, **static)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:  # a plugin's loss must reduce
                loss = _scalar_loss(loss, edge)
            for key in free:
                values.pop(key, None)
            return loss

        return run

    def _step_error(self, step: Step, values: dict[str, Any], e: BaseException) -> NodeError:
        """The error of a failed step, naming its node or edge and the shapes it was given."""
        if isinstance(e, NodeError):
            return e
        if step.kind == "node":
            node = self.spec.nodes[step.name]
            shapes = ", ".join(f"{p} {_shape(values.get(p))}" for p in node.inputs)
            what = f"node {step.name!r} ({node.kind} {node.type})"
            return NodeError(what, f"{first_line(e)} [inputs: {shapes}]", node=step.name)
        edge = self._edges[step.name]
        pred, target = values.get(edge.pred), values.get(edge.target)
        what = f"edge {edge.name!r} (loss {edge.loss}, edges[{edge.index}])"
        if _shapes_differ(pred, target) and re.search(r"shape|size|differ|match|dimension", str(e), re.I):
            return NodeError(
                what,
                f"{edge.pred} {_shape(pred, 'N')} and {edge.target} {_shape(target, 'N')} differ in shape",
                _adapter_hint(edge, pred, target),
                edge=edge.name,
            )
        blamed = _blame_key(edge, pred, target, e, self.spec.doc.get("vars") or {})
        if blamed:
            message, hint, key = blamed
            return NodeError(what, message, hint, edge=edge.name, key=key)
        shapes = f"[{edge.pred} {_shape(pred)}, {edge.target} {_shape(target)}]"
        return NodeError(what, f"{first_line(e)} {shapes}", edge=edge.name)


_LOW = (torch.float16, torch.bfloat16)
_CACHE_KEYS = "data.index+variant"


def _free_closure(free: tuple[str, ...]):
    """A fused peer's own step: its values came with the first peer's; only what it last read is dropped."""

    def run(values: dict[str, Any]) -> None:
        for key in free:
            values.pop(key, None)

    return run


def _agreed(choice: bool, device: torch.device) -> bool:
    """One process's timing decides for all (every process must run the same program)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return choice
    flag = torch.tensor([float(choice)], device=device if device.type == "cuda" else "cpu")
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def _top_up(rows: torch.Tensor, n: int, least: int) -> torch.Tensor:
    """`rows` (positions in a batch of `n`) followed by other positions until there are min(least, n)."""
    if len(rows) >= least or len(rows) == n:
        return rows
    taken = torch.zeros(n, dtype=torch.bool, device=rows.device)
    taken[rows] = True
    others = (~taken).nonzero().flatten()[: least - len(rows)]
    return torch.cat([rows, others])


def _scalar_loss(loss: Any, edge: EdgeSpec) -> torch.Tensor:
    """A one-element tensor as a scalar; anything else is the edge's error."""
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.reshape(())
    what = f"shape {_shape(loss)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
    raise NodeError(
        f"edge {edge.name!r} (loss {edge.loss}, edges[{edge.index}])",
        f"the loss returned {what}, not a scalar",
        "a loss reduces over the batch, e.g. with .mean()",
        edge=edge.name,
    )


def _autocast_on(device_type: str) -> bool:
    if not torch.amp.is_autocast_available(device_type):  # the meta device (validate's dry run) has no autocast
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _is_float32_wrapper(fn: Any) -> bool:
    """Whether `fn` is wrapped by kdgraph.losses._util.float32 (whose code object all its wrappers share)."""
    return hasattr(fn, "__wrapped__") and getattr(fn, "__code__", None) is float32(lambda: None).__code__


def _shapes_differ(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape == b.shape:
        return False
    return [d for d in a.shape[1:] if d != 1] != [d for d in b.shape[1:] if d != 1]


def _blame_key(
    edge: EdgeSpec, pred: Any, target: Any, e: BaseException, variables: dict
) -> tuple[str, str, str] | None:
    """(message, hint, key) when torch's message points at one key of the edge: a parameter or `from`."""
    text = str(e)
    bad = re.search(r"could not convert string to float: '(.*)'|invalid literal for int\(\) with base 10: '(.*)'", text)
    if bad:
        word = bad.group(1) or bad.group(2)
        for key, value in edge.params.items():
            if isinstance(value, str) and value == word:
                source = [f"vars.{v}" for v, x in variables.items() if x == word]
                where = f" (from {', '.join(source)})" if source else ""
                return f"{key} = {value!r}{where} is not a number", "give a number, or vars that are numbers", key
    wants_labels = isinstance(target, torch.Tensor) and target.is_floating_point() and target.dim() == 2
    if wants_labels and edge.target != "data.label" and re.search(r"target|label|class", text, re.I):
        return (
            f"loss {edge.loss} takes class labels (N,) as its target, but {edge.target} is {_shape(target, 'N')}",
            "from: data.label; to distil soft targets from logits use loss kd",
            "from",
        )
    return None


def _adapter_hint(edge: EdgeSpec, pred: torch.Tensor, target: torch.Tensor) -> str | None:
    """The node that would make the learner's port fit the target's shape."""
    name = f"{node_of(edge.pred)}_{edge.pred.split('.', 1)[1]}_to_{node_of(edge.target)}"
    if pred.dim() == target.dim() and pred.dim() in (2, 4) and pred.shape[1] != target.shape[1]:
        return (
            f"add a connector node, e.g. {name}: {{op: connector, in: [{edge.pred}, {edge.target}]}}, "
            f"and use {name}.out as `to`"
        )
    if pred.dim() == target.dim() == 4:
        pool = f"{name}: {{op: pool, in: [{edge.pred}, {edge.target}]}}"
        return f"add a pool node, e.g. {pool}, and use {name}.out as `to`"
    return None


class _NodeView:
    """Read-only access to already built nodes, without registering them as submodules."""

    def __init__(self, modules: nn.ModuleDict):
        self._modules = modules

    def __getitem__(self, name: str) -> nn.Module:
        return self._modules[name]

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def keys(self):
        return self._modules.keys()


def _shape(value: Any, batch: str | None = None) -> str:
    """(2, 64, 8, 8), or (N, 64, 8, 8) with batch="N"; a non-tensor's type name."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    dims = [str(d) for d in value.shape]
    if batch and dims:
        dims[0] = batch
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _registered(node: NodeSpec) -> bool:
    return node.type in (NETS if node.kind == "net" else OPS)


