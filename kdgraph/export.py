"""Export what a run delivers: the slice of the graph that feeds its ``deploy`` port, as one nn.Module.

    kdgraph export runs/simkd/20250101-120000 -o simkd.pt        # writes simkd.pt and simkd.ts
    model = kdgraph.export.load_exported("simkd.pt")              # forward(image) -> the deploy port

The slice is every node whose *value* the port needs (a net's inputs, an op's ``in:`` ports), in
the graph's order. A ``call`` op applies a submodule of another node (SimKD: the teacher's
classifier); when that node is not itself in the slice, the export holds a standalone copy of the
submodule only (``StandaloneCall``), so SimKD ships student + projector + ``teacher.fc``, not the
teacher. Loss edges, teachers and helpers that only shape training are left out, and so are the
weights of submodules the port never calls (SimKD's student reaches the projector from its last stage
and never runs its own classifier: a ``Pruned`` placeholder stands in for it). ``kdgraph plan``
counts exactly what the export holds (``deployed_parameter_count``).

The exported file (``torch.save`` of a dict, format ``kdgraph-export/1``) holds the ``state_dict``
and what rebuilds the module without the run: the resolved node definitions of the slice (plus the
definition of each node a standalone call copies from, to rebuild its submodule's shape), the
registry names they use, the data facts (classes, channels, image size), the input normalisation
(mean, std) and the epoch at which scheduled op parameters are frozen. ``forward(image)`` takes
images normalised as in training, ``(x / 255 - mean) / std``; ``model.normalize`` holds mean and std.

TorchScript: ``torch.jit.trace`` of that module, saved next to the ``.pt`` with the suffix ``.ts``
(``torch.jit.load`` needs no kdgraph). A trace records the tensor operations of one example
(a batch at the run's image size), so the ``.ts`` is specialised to that image size; it is written
only when it reproduces the module on a second batch of another size, otherwise the command says
why and writes the ``.pt`` alone.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .catalog import admitted, imported_sha256, load_builtins, load_plugin
from .datasets.base import DataInfo
from .errors import CheckpointError, RunError, SpecError
from .graph import DistillGraph
from .plan import build_program
from .plugin_trust import NO_PLUGINS, Admission, PluginChoice, PluginRefused, choice_of, legacy_records, valid_records
from .registry import PortInfo
from .safe_load import load_weights
from .spec import GraphSpec, load_spec
from .spec.dataflow import dataflow_graph, needed, node_of, node_refs, topo_order

FORMAT = "kdgraph-export/1"
# node keys that describe training, not the deployed computation
TRAINING_KEYS = ("init", "optim", "frozen")


# ----------------------------------------------------------------------------- the slice


def deploy_slice(spec: GraphSpec, port: str) -> tuple[list[str], dict[str, str]]:
    """Nodes whose values compute `port` (in graph order), and {call op: node} for calls whose node is outside."""
    load_builtins()  # node_refs reads the ops' declarations
    order = needed(topo_order(spec), dataflow_graph(spec, refs=False), [port])
    outside = {}
    for name in order:
        for ref in node_refs(spec, name):
            if ref not in order:
                outside[name] = ref
    return order, outside


def deployed_modules(graph: DistillGraph, port: str | None = None) -> dict[str, nn.Module]:
    """What the export of `port` (default: the deploy port) contains: each slice node, or a call's target."""
    port = port or graph.spec.deploy
    if not port:
        return {}
    order, outside = deploy_slice(graph.spec, port)
    modules: dict[str, nn.Module] = {}
    for name in order:
        node = graph.nodes[name]
        if name in outside:
            ref = outside[name]
            path = graph.spec.nodes[name].params.get("module", "")
            modules[f"{ref}.{path}" if path else ref] = node.target
        else:
            modules[name] = node
    return modules


def unused_leaves(roots: dict[str, nn.Module], run: Callable[[], Any]) -> dict[str, list[str]]:
    """{root: [paths]}: the leaf modules holding weights under each root that ``run()`` never calls.

    A net computes only the ports asked of it: SimKD's student feeds its last stage to the projector and
    never runs its own classifier, which then is no part of the deployed model.
    """
    called: set[int] = set()
    handles = [
        m.register_forward_hook(lambda module, _i, _o: called.add(id(module)))
        for root in roots.values()
        for m in root.modules()
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    found: dict[str, list[str]] = {}
    for key, root in roots.items():
        paths = [
            name
            for name, m in root.named_modules()
            if name and id(m) not in called and not list(m.children()) and _holds_state(m)
        ]
        if paths:
            found[key] = paths
    return found


def _holds_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def _graph_unused(graph: DistillGraph, modules: dict[str, nn.Module], port: str) -> dict[str, list[str]]:
    """Unused leaves of the deployed modules when the training graph computes `port` on a tiny batch."""
    info = graph.data_info
    image = torch.randn(2, info.channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    modes = {m: m.training for m in graph.modules()}
    for m in modes:
        m.training = False
    label = torch.arange(2) % info.num_classes  # a port may read data.label too
    try:
        return unused_leaves(modules, lambda: graph.outputs(image, [port], label))
    finally:
        for m, mode in modes.items():
            m.training = mode


def deployed_parts(graph: DistillGraph) -> list[str]:
    """The slice as ``kdgraph plan`` shows it: node names, a call's copied submodule, the parts left out."""
    modules = deployed_modules(graph)
    unused = _graph_unused(graph, modules, graph.spec.deploy) if modules else {}
    parts = []
    for key, module in modules.items():
        part = key if key in graph.nodes and graph.nodes[key] is module else f"{_call_of(graph, module)} ({key})"
        if key in unused:
            part += f" (without {', '.join(unused[key])})"
        parts.append(part)
    return parts


def _call_of(graph: DistillGraph, target: nn.Module) -> str:
    return next(n for n, m in graph.nodes.items() if getattr(m, "target", None) is target)


def deployed_parameter_count(graph: DistillGraph) -> int:
    """Parameters the exported module of the deploy port really holds (each shared tensor once)."""
    modules = deployed_modules(graph)
    if not modules:
        return 0
    unused = _graph_unused(graph, modules, graph.spec.deploy)
    left_out = {
        id(p) for key, paths in unused.items() for path in paths for p in modules[key].get_submodule(path).parameters()
    }
    seen: dict[int, int] = {}
    for module in modules.values():
        for p in module.parameters():
            if id(p) not in left_out:
                seen[id(p)] = p.numel()
    return sum(seen.values())


class Pruned(nn.Module):
    """Stands in for a submodule the deployed port never uses (a student's own classifier in SimKD)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, *_: Any) -> None:
        raise RuntimeError(f"{self.path} was left out of the deployed model: the deploy port does not use it")

    def extra_repr(self) -> str:
        return f"{self.path!r}"


def prune(model: DeployedModel, paths: dict[str, list[str]]) -> None:
    """Replace the given submodules of the slice's nodes by ``Pruned`` placeholders (no weights)."""
    for node, subpaths in paths.items():
        root = model.graph.nodes[node]
        for path in subpaths:
            parent_path, _, last = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            parent._modules[last] = Pruned(f"{node}.{path}")


# ----------------------------------------------------------------------------- the module


class StandaloneCall(nn.Module):
    """A ``call`` op's submodule copied out of the node it belongs to: the slice holds only that submodule."""

    def __init__(self, module: nn.Module, info: PortInfo):
        super().__init__()
        self.module = module
        self._info = info

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


class DeployedModel(nn.Module):
    """The deployed slice of a graph: ``forward(image)`` returns the deploy port (e.g. logits (N, classes))."""

    def __init__(self, graph: DistillGraph, port: str, normalize: dict[str, list[float]] | None = None):
        super().__init__()
        self.graph, self.port = graph, port
        self.normalize = normalize or {}
        order = [n for n in deploy_slice(graph.spec, port)[0]]
        # gradient is the caller's choice (torch.no_grad / inference_mode), not the walker's
        program = build_program(graph.spec, order, [port], [], lambda n: False, keep=[port])
        self._program = graph.bind(program, False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        values = self.graph.data_values(image)
        self.graph.walk(self._program, values)
        return values[self.port]

    def train(self, mode: bool = True) -> DeployedModel:
        """Plain train/eval of every module (the training graph's stage rules do not apply any more)."""
        self.training = self.graph.training = mode
        for module in self.graph.nodes.values():
            module.train(mode)
        return self

    def extra_repr(self) -> str:
        return f"port={self.port!r}"


def _slice_document(doc: dict, port: str) -> tuple[dict, dict[str, str]]:
    """The resolved graph restricted to what computes `port`, as a document a spec can be loaded from."""
    order, outside = deploy_slice(_run_spec(doc), port)
    keep = set(order) | set(outside.values())
    sliced = {
        "kdgraph": 1,
        "name": f"{doc['name']}_deployed",
        "title": f"deployed {port} of {doc.get('title', doc['name'])}",
        "nodes": _without_training(doc, keep)["nodes"],
        "edges": [],
        "deploy": port,
        "train": {"epochs": 0, "eval": [port]},  # nothing to train: a graph of the deployed computation only
    }
    views = (doc.get("data") or {}).get("views")
    if views:  # nodes may read data.<view>.image: the deployed module feeds them its one image
        sliced["data"] = {"views": copy.deepcopy(views)}
    return sliced, outside


def _without_training(doc: dict, keep: set[str]) -> dict:
    nodes = {}
    for name, raw in doc["nodes"].items():
        if name in keep:
            nodes[name] = {k: copy.deepcopy(v) for k, v in raw.items() if k not in TRAINING_KEYS}
            nodes[name]["frozen"] = True  # nothing trains: no "reached by no loss" for a graph without losses
    return {"kdgraph": 1, "name": doc["name"], "nodes": nodes, "edges": [], "deploy": doc.get("deploy")}


def build_deployed(record: dict[str, Any]) -> DeployedModel:
    """The module an export record describes (weights not loaded): the slice rebuilt from the registries.

    Imports nothing: the record's plugins are imported first, through ``import_recorded``.
    """
    spec = load_spec(document=record["spec"])
    graph = DistillGraph(spec, DataInfo(**record["data_info"]))
    for call in record["outside"]:
        op = graph.nodes[call]
        graph.nodes[call] = StandaloneCall(copy.deepcopy(op.target), op.port_info()["out"])
    for ref in set(record["outside"].values()):
        del graph.nodes[ref]
    graph.set_epoch(int(record.get("epoch", 1)))
    model = DeployedModel(graph, record["port"], record.get("normalize"))
    prune(model, record.get("pruned") or {})
    model.requires_grad_(True)
    return model.eval()


def import_recorded(records: list[dict[str, Any]], where: str, choice: PluginChoice, api: bool = False) -> None:
    """Import the plugins an artifact records, each only as the user allows it (kdgraph/plugin_trust.py)."""
    from .catalog import PluginError

    with admitted(Admission(where, records, choice, api)):
        for r in records:
            try:
                load_plugin(r["name"] if r.get("module") else r["path"])
            except PluginError as e:  # a trusted path gone, or a file that fails to import
                raise PluginRefused(f"{where}: recorded plugin {r['name']}: {e}") from None


def _export_records(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """An export's plugin records (an export of an older kdgraph: names relative to its graph's folder)."""
    plugins = record.get("plugins")
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        return legacy_records(plugins, Path(str(record.get("base_dir") or ".")))
    return valid_records(plugins, where)


def load_exported(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    raw: bool = False,
    *,
    plugins: list[str | Path] | tuple[str | Path, ...] = (),
    trust_plugins: bool = False,
) -> nn.Module:
    """The module saved by ``kdgraph export``, in eval mode: ``forward(image)`` returns the deploy port.

    ``forward`` takes images normalised as in training (``model.normalize``: mean, std); with ``raw=True``
    it takes them as the dataset gives them, uint8 0..255 or floats in [0, 1] (``preprocess.RawImages``).
    An export with a plugin op names its file and SHA-256 but imports nothing by itself: pass the same
    file again (``plugins=["fusion.py"]``, matched by SHA-256, from anywhere) or ``trust_plugins=True``.
    """
    choice = PluginChoice(tuple(str(p) for p in plugins), trust_plugins)
    return exported_module(path, choice, map_location, raw, api=True)


def exported_module(
    path: str | Path,
    plugins: PluginChoice = NO_PLUGINS,
    map_location: str | torch.device = "cpu",
    raw: bool = False,
    api: bool = False,
) -> nn.Module:
    """``load_exported`` with the plugin choice of a command line (`api`: refusals name the Python arguments)."""
    if not Path(path).exists() and not Path(path).is_symlink():
        raise CheckpointError(f"cannot read exported model {str(path)!r}: no such file")
    record = load_weights(Path(path), f"exported model {str(path)!r}")  # data, never code; a regular file only
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kdgraph export (format {FORMAT})")
    import_recorded(_export_records(record, str(path)), str(path), plugins, api)
    model = build_deployed(record)
    model.load_state_dict(record["state_dict"])
    model = model.to(map_location) if str(map_location) != "cpu" else model
    if raw:
        from .preprocess import RawImages

        return RawImages(model, **model.normalize).to(map_location).eval()
    return model


# ----------------------------------------------------------------------------- from a run


def _read_final(run_dir: Path) -> dict[str, Any]:
    final = run_dir / "final.pt"
    if not final.exists() and not final.is_symlink():
        what = "an unfinished run (resume it first)" if (run_dir / "run.json").exists() else "not a run directory"
        raise RunError(f"{run_dir} has no final.pt: {what}")
    record = load_weights(final, str(final), within=run_dir)  # final.pt of this run, not a link out of it
    if not isinstance(record, dict) or not isinstance(record.get("graph"), dict):
        raise RunError(f"{final} is not a kdgraph final.pt")
    return record


def run_plugin_records(run_dir: Path, final: dict[str, Any]) -> list[dict[str, Any]]:
    """The plugins a finished run records in final.pt (a run of an older kdgraph: its spec's names)."""
    if "plugins" in final:
        return valid_records(final["plugins"], str(run_dir / "final.pt"))
    source = final.get("source")
    base = Path(source).parent if isinstance(source, str) else run_dir
    return legacy_records((final.get("spec") or {}).get("plugins"), base)


def export_run(
    run_dir: str | Path,
    out: str | Path,
    port: str | None = None,
    torchscript: bool = True,
    plugins: PluginChoice = NO_PLUGINS,
) -> dict[str, Any]:
    """Write the deployed slice of a finished run to `out` (and a traced `.ts` beside it); returns a report.

    The run's plugins are imported only as `plugins` allows (the files named again, or trusted).
    """
    run_dir, out = Path(run_dir), Path(out)
    final = _read_final(run_dir)
    records = run_plugin_records(run_dir, final)
    import_recorded(records, str(run_dir), plugins)
    records = [r if r.get("module") else {**r, "sha256": r["sha256"] or imported_sha256(r["path"])} for r in records]
    doc = final["spec"]
    port = port or final.get("deploy")
    if not port:
        raise SpecError(f"the graph of {run_dir} has no deploy port; name one with --port NODE.PORT")
    if node_of(port) not in doc["nodes"]:
        raise SpecError(f"--port {port!r}: no node {node_of(port)!r} in the graph of {run_dir}")
    info = final.get("data_info") or _data_info(doc)
    sliced, outside = _slice_document(doc, port)
    source = final.get("source")
    record: dict[str, Any] = {
        "format": FORMAT,
        "spec": sliced,
        "outside": outside,
        "port": port,
        "data_info": dict(info),
        "epoch": final.get("epoch", 1),
        "normalize": final.get("normalize"),
        "plugins": records,  # name, path and SHA-256 of each: loaded only when named again (load_exported)
        "base_dir": str(Path(source).parent) if source else None,
        "source": source,
        "run": {"dir": str(run_dir), "hash": final["summary"].get("hash"), "final": final["summary"].get("final")},
    }
    model = build_deployed(record)
    _load_run_weights(model, final["graph"], sliced, outside)
    record["pruned"] = _prune_unused(model, DataInfo(**record["data_info"]))
    record["registry"] = {
        n: ("net " + raw["net"]) if "net" in raw else ("op " + raw["op"]) for n, raw in sliced["nodes"].items()
    }
    record["state_dict"] = model.state_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    from .checkpoint import save_file

    save_file(out, record)
    report = {
        "out": str(out),
        "port": port,
        "nodes": list(model.graph.nodes),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torchscript": None,
        "torchscript_problem": None,
    }
    if torchscript:
        ts_path = out.with_suffix(".ts")
        problem = write_torchscript(model, DataInfo(**record["data_info"]), ts_path)
        if problem is None:
            report["torchscript"] = str(ts_path)
        else:
            report["torchscript_problem"] = problem
    return report


def _run_spec(doc: dict) -> GraphSpec:
    """The run's resolved graph as a spec, for its structure and settings (its init files are not needed)."""
    return load_spec(document=doc, check_registry=False)


def _data_info(doc: dict) -> dict[str, int]:
    from .data import data_info

    return data_info(_run_spec(doc).data).__dict__.copy()


def _prune_unused(model: DeployedModel, info: DataInfo) -> dict[str, list[str]]:
    """Leave out the weights the port never uses, if the module still computes the same without them."""
    image = torch.randn(2, info.channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(image)
        unused = unused_leaves(dict(model.graph.nodes), lambda: model(image))
        if not unused:
            return {}
        kept = {name: copy.deepcopy(module) for name, module in model.graph.nodes.items() if name in unused}
        prune(model, unused)
        try:
            same = torch.equal(model(image), before)
        except RuntimeError:  # a weight read without calling its module: keep everything
            same = False
    if not same:
        for name, module in kept.items():
            model.graph.nodes[name] = module
        return {}
    return unused


def _load_run_weights(model: DeployedModel, state: dict[str, torch.Tensor], sliced: dict, outside: dict) -> None:
    for name, module in model.graph.nodes.items():
        if name in outside:
            path = sliced["nodes"][name].get("module", "")
            prefix = f"nodes.{outside[name]}." + (f"{path}." if path else "")
        else:
            prefix = f"nodes.{name}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        target = module.module if isinstance(module, StandaloneCall) else module
        try:
            target.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"the run's weights do not fit node {name!r}: {str(e).splitlines()[0]}") from None


def write_torchscript(model: DeployedModel, info: DataInfo, path: Path) -> str | None:
    """Trace `model` and save it to `path` if the trace reproduces it on another batch; else say why not."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    example = torch.randn(2, info.channels, info.image_size, info.image_size, generator=g)
    check = torch.randn(3, info.channels, info.image_size, info.image_size, generator=g)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values: checked below instead
            traced = torch.jit.trace(model, example, check_trace=False)
            expected, got = model(check), traced(check)
    except Exception as e:  # any op the tracer cannot follow: the .pt export still stands
        return f"not traceable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(got, expected)):
        return "the trace does not reproduce the module on another batch (data-dependent control flow)"
    import io

    from .checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates jit in favour of torch.export
        torch.jit.save(traced, buf)
    atomic_write_bytes(path, buf.getvalue())
    return None


@torch.no_grad()
def evaluate_exported(model: nn.Module, run_dir: str | Path, batch_size: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 (%) of `model` on the test split of a run's data, batched as its evaluation was."""
    from .data import Normalizer, TensorLoader, load_dataset, normalization_of

    final = _read_final(Path(run_dir))
    spec = _run_spec(final["spec"])
    source = final.get("source")
    base = Path(source).parent if source else Path.cwd()
    seed = int(spec.train["seed"])
    dataset = load_dataset(spec.data, base, seed)
    device = next(iter(model.parameters()), torch.zeros(0)).device
    train_cfg = spec.stages[-1].train
    # the run's numerics: its autocast, and bf16 images when its loader kept them on the device
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_cfg["precision"])
    on_device_bf16 = spec.data["loader"] == "device" and amp is torch.bfloat16
    mean, std = normalization_of(dataset, spec.data)
    norm = Normalizer(mean, std, device, torch.bfloat16 if on_device_bf16 else torch.float32)
    loader = TensorLoader(
        dataset.test,
        int(batch_size or spec.data["eval_batch_size"]),
        norm,
        device,
        train=False,
        augment=False,
        seed=seed,
        limit_batches=train_cfg["limit_eval_batches"],
    )
    model.eval()
    hits1 = hits5 = seen = 0
    for batch in loader.epoch(1):
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            out = model(batch.image).float()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hit = top == batch.label[:, None]
        hits1 += int(hit[:, 0].sum())
        hits5 += int(hit.any(dim=1).sum())
        seen += len(batch.label)
    n = max(seen, 1)
    return {"top1": round(100 * hits1 / n, 4), "top5": round(100 * hits5 / n, 4)}


# ----------------------------------------------------------------------------- command line


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    out = Path(args.output) if args.output else run_dir / "model.pt"
    choice = choice_of(args)
    report = export_run(run_dir, out, port=args.port, torchscript=not args.no_torchscript, plugins=choice)
    print(f"exported {report['port']} ({', '.join(report['nodes'])}; {report['parameters']:,} parameters) -> {out}")
    if report["torchscript"]:
        print(f"TorchScript (traced at the run's image size) -> {report['torchscript']}")
    elif report["torchscript_problem"]:
        print(f"no TorchScript: {report['torchscript_problem']}")
    if args.check:
        final = _read_final(run_dir)["summary"].get("final", {}).get("top1", {})
        model = exported_module(out, choice)
        got = evaluate_exported(model, run_dir)["top1"]
        expected = final.get(report["port"])
        if expected is None:
            print(f"exported model: top-1 {got:.2f}% on the test split (the run did not evaluate {report['port']})")
        elif abs(got - expected) > 1e-9:
            raise RunError(
                f"exported model: top-1 {got:.4f}% on the test split, the run's final evaluation "
                f"{expected:.4f}%: the export does not reproduce the run"
            )
        else:
            print(f"check: top-1 {got:.2f}% on the test split, as the run's final evaluation")
    return 0


__all__ = [
    "DeployedModel",
    "Pruned",
    "StandaloneCall",
    "deploy_slice",
    "deployed_modules",
    "deployed_parameter_count",
    "deployed_parts",
    "evaluate_exported",
    "export_run",
    "load_exported",
    "prune",
    "unused_leaves",
]
