"""check_graph: a graph file loaded, built once and dry-run once; what run, plan and draw need.

    checked = check_graph("graphs/kd.yaml", ["train.epochs=2"])
    checked.spec, checked.graph          # also unpacks: spec, graph = check_graph(...)

The graph is built right after seeding with ``train.seed`` and handed back with the weights it was
built with (the dry run's fits and RNG draws are undone), so training it is training a fresh build.
What nothing will train (validate: ``weights=False``) is built without initialising its weights and
dry-run on an empty batch; the real dry run decides only where that one cannot (kdgraph/value_watch.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from .data import data_info
from .datasets.base import DataInfo
from .deps import dependency_problems
from .errors import NodeError, PlanError, SpecError, error_of, first_line, sort_problems
from .graph import DistillGraph
from .meta import uninitialised
from .registry import DATASETS
from .rng import rng_state, seed_everything, set_rng_state
from .spec import GraphSpec, load_spec
from .steps import step_problems
from .value_watch import ValueWatch, static_reason
from .views import view_names


class CheckedGraph(NamedTuple):
    """A spec with every problem found and its graph module, built once (dry-run when asked)."""

    spec: GraphSpec
    graph: DistillGraph

    @property
    def info(self) -> DataInfo:
        return self.graph.data_info


def spec_data_info(spec: GraphSpec) -> DataInfo:
    """Classes, channels and image size from the `data:` section, without loading the data."""
    return data_info(spec.data, spec.base_dir)


def _guessed_data_info(spec: GraphSpec) -> DataInfo:
    """The data's shape for finding more problems: an unknown dataset (already reported) has none of its own."""
    if spec.data.get("dataset") in DATASETS:
        return spec_data_info(spec)
    return DataInfo(int(spec.data["classes"]), int(spec.data["channels"]), int(spec.data["image_size"]))


def check_graph(
    path: str | Path, overrides: list[str] | None = None, *, dry: bool = True, weights: bool = True
) -> CheckedGraph:
    """Load, build, plan and (with `dry`) dry-run a graph file, reporting every phase's problems at once.

    A file with an unknown net, a misspelt port and a cycle gets all three in one SpecError: loading
    finds the net and the cycle, building what can be built finds the port. Without `weights` the
    graph is for checking only (its weights are not initialised): see check_spec.
    """
    try:
        spec = load_spec(path, overrides)
    except SpecError as e:
        if e.spec is None:
            raise
        more = DistillGraph.problems_of(e.spec, _guessed_data_info(e.spec), e.problems)
        raise error_of(sort_problems(e.problems + more)) from None
    deps = dependency_problems(spec)  # init.from overrides, invalid dependencies, cycles of graph files
    if deps:
        raise SpecError(deps)
    steps = step_problems(spec, spec_data_info(spec))  # epochs 0, or no full batch with drop_last
    if steps:
        raise SpecError(steps)
    return check_spec(spec, dry=dry, weights=weights)


def check_spec(
    spec: GraphSpec, info: DataInfo | None = None, *, dry: bool = True, weights: bool = True
) -> CheckedGraph:
    """Build the graph of a loaded spec once, seeded by ``train.seed``; with `dry`, dry-run it too.

    Without `weights` (a graph nothing will train: validate) the graph is built with torch.nn.init
    skipped and dry-run on an empty batch; where that fails or cannot decide (value_watch.py) the graph
    is built and dry-run as with `weights`, so the problems reported are the same either way.
    """
    if not weights:
        checked = _unweighted(spec, info or spec_data_info(spec), dry)
        if checked is not None:
            return checked
    seed_everything(int(spec.train["seed"]))
    graph = DistillGraph(spec, info or spec_data_info(spec))
    if dry:
        built, rng = {k: v.detach().clone() for k, v in graph.state_dict().items()}, rng_state()
        probe(graph)
        graph.load_state_dict(built)  # the fits and statistics of the dry run are not the real ones
        set_rng_state(rng)
        graph.set_stage(graph.plan.stages[0])
        graph.set_epoch(1)
    graph.train()
    return CheckedGraph(spec, graph)


def _unweighted(spec: GraphSpec, info: DataInfo, dry: bool) -> CheckedGraph | None:
    """The graph built without initialising weights (and dry-run on an empty batch); None where the real one decides."""
    try:
        with uninitialised():
            graph = DistillGraph(spec, info)
        if dry and _needs_values(graph):
            return None
    except Exception:  # the real build and dry run report it, in their own words
        return None
    graph.set_stage(graph.plan.stages[0])
    graph.set_epoch(1)
    graph.train()
    return CheckedGraph(spec, graph)


def _needs_values(graph: DistillGraph) -> bool:
    """Whether the dry run on an empty batch leaves something to values (value_watch.py); raises what it raises."""
    if static_reason(graph) is not None:
        return True
    with ValueWatch() as watch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. std() of no samples: true of an empty batch, not of the graph
        probe(graph, batch=0)
    return watch.reason is not None


def dry_run(spec: GraphSpec, data: DataInfo, batch: int = 2) -> DistillGraph:
    """Build a throwaway graph and push a tiny batch through every stage: shapes checked, fits run.

    Each stage's losses are also backpropagated once, which checks the backward pass and finds the
    parameters of trainable nodes that no loss reaches (e.g. a student's classifier when only its
    features are distilled): the returned graph's ``gradless`` lists them per stage, and a graph that
    adopts them freezes them in that stage, so data-parallel training needs no unused-parameter search.
    """
    graph = DistillGraph(spec, data)
    probe(graph, batch)
    return graph


def probe(graph: DistillGraph, batch: int = 2) -> None:
    """The dry run on a built graph: a tiny batch through every stage (fits, forward, backward, eval).

    At ``batch=0`` (validate, kdgraph/value_watch.py) every shape is checked and nothing computed.

    Sets ``graph.gradless``; raises PlanError naming the node or edge that failed.
    """
    spec, data = graph.spec, graph.data_info
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, data.channels, data.image_size, data.image_size, generator=g)
    label = torch.arange(batch) % data.num_classes
    views = {v: torch.randn(image.shape, generator=g) for v in view_names(graph.spec.data)}  # distinct, as in training
    problems = []
    for stage in graph.plan.stages:
        graph.set_stage(stage)
        graph.eval()
        try:
            if stage.fit:
                for name in stage.fit:
                    graph.nodes[name].fit_begin()
                graph.fit_batch(image, label)
                for name in stage.fit:
                    graph.nodes[name].fit_end()
            total, _ = graph(image, label, torch.arange(batch), views)
            if total.requires_grad:
                total.backward()
            graph.gradless[stage.index] = [n for n, p in graph.named_parameters() if p.requires_grad and p.grad is None]
            graph.zero_grad(set_to_none=True)
            graph.evaluate(image)
        except NodeError as e:
            where = f" in stage {stage.name!r}" if spec.doc.get("stages") else ""
            problems.append(spec.problem(_error_path(spec, e), f"{e.what}: {e.message}{where}", e.hint, "dry_run"))
            break
        except RuntimeError as e:  # the forward worked: the backward did not
            where = f" of stage {stage.name!r}" if spec.doc.get("stages") else ""
            problems.append(spec.problem((), f"the backward pass{where} failed: {first_line(e)}", kind="dry_run"))
            break
    if problems:
        raise PlanError(problems)


def _error_path(spec: GraphSpec, e: NodeError) -> tuple:
    """Where in the graph file the failed node or edge is written (down to its key at fault, when known)."""
    if e.edge is not None:
        return ("edges", spec.edge(e.edge).index, *([e.key] if e.key else []))
    if e.node is not None:
        return ("nodes", e.node)
    return ()
