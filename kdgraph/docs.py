"""The reference documentation of every net, op and loss, generated from the registries.

    kdgraph list --markdown -o docs/reference.md

Parameters (types and defaults) come from the signatures, ports from the nets themselves (built on
the meta device, so nothing is allocated) and from the ops' ``outputs``, descriptions from the
docstrings. The output depends on nothing but the registered code, so a test can hold the
committed file to it.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from typing import Any

from .catalog import load_builtins
from .registry import LOSSES, NETS, OPS, Entry, PortInfo, Registry
from .views import reference_section as views_reference

REGENERATE = "kdgraph list --markdown -o docs/reference.md"
FROM_DATA = ("num_classes", "in_channels", "image_size", "num_train")  # the engine fills these from the dataset
PLUMBING = ("in_info", "nodes")  # the engine passes these to ops; never written in a graph file
LOSS_INPUTS = ("labels", "sample_weight")  # data.label, and the edge's `sample_weight:` port

INTRO = {
    "nets": "A net node is `name: {net: NET, ...parameters}`; it reads `data.image` unless `in:` says otherwise. "
    "Ports are listed as built for 100 classes on 32x32 images; `num_classes` and `in_channels` come from the "
    "data unless given. Any submodule's output is a port too, with `taps: {name: module.path}`.",
    "ops": "An op node is `name: {op: OP, in: [PORT, ...], ...parameters}`; it receives the `in:` ports in order. "
    "Parameters marked *from the data* are filled by the engine unless given.",
    "losses": "An edge is `- {loss: LOSS, from: PORT, to: PORT, weight: W, ...parameters}`: the loss receives the "
    "`to` port (the learner) as its prediction and the `from` port (detached unless `detach: false`) as its "
    "target. A parameter typed `Tensor` may also be a port (a learned temperature: `T: temp.out`).",
}


def reference_markdown(include_plugins: bool = False) -> str:
    """The whole reference as Markdown (built-ins only unless ``include_plugins``)."""
    load_builtins()
    sections = [("nets", NETS, _net_block), ("ops", OPS, _op_block), ("losses", LOSSES, _loss_block)]
    chosen = {kind: _entries(reg, include_plugins) for kind, reg, _ in sections}
    counts = ", ".join(f"{len(chosen[kind])} {kind}" for kind, _, _ in sections)
    out = [
        "# Reference: nets, ops and losses",
        "",
        f"Generated from the registries by `{REGENERATE}`; do not edit it by hand. {counts}.",
        "",
        "- [Nets](#nets)\n- [Ops](#ops)\n- [Losses](#losses)\n- [Views](#views)",
    ]
    for kind, _, block in sections:
        entries = chosen[kind]
        out += ["", f"## {kind.capitalize()}", "", INTRO[kind], "", "| name | description |", "|---|---|"]
        out += [f"| [`{e.name}`](#{_anchor(e)}) | {_cell(e.description)} |" for e in entries]
        for group in _groups(entries, block):
            out += ["", *group]
    out += ["", *views_reference()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n"


def _entries(registry: Registry, include_plugins: bool) -> list[Entry]:
    return [e for e in registry.entries() if include_plugins or e.module.startswith("kdgraph.")]


# ----------------------------------------------------------------------------- grouping


def _groups(entries: list[Entry], block: Callable[[Entry], tuple[list[str], list[str]]]) -> list[list[str]]:
    """One block per entry; entries of one module that share everything but their first line share one."""
    rendered = [(e, *block(e)) for e in entries]
    by_key: dict[tuple, list[tuple[Entry, list[str], list[str]]]] = {}
    for e, body, details in rendered:
        shared = _doc(e.obj).partition("\n")[2].strip()
        key = (e.module, shared, tuple(body[1:])) if shared else (e.name,)
        by_key.setdefault(key, []).append((e, body, details))
    blocks = []
    for members in by_key.values():
        if len(members) == 1:
            e, body, details = members[0]
            blocks.append([f'<a id="{_anchor(e)}"></a>', "", f"### `{e.name}`", "", _doc(e.obj), *body, *details])
            continue
        names = [e.name for e, _, _ in members]
        prefix = os.path.commonprefix(names)
        title = f"`{prefix}*`" if prefix else f"`{names[0]}` ... `{names[-1]}`"
        anchors = " ".join(f'<a id="{_anchor(e)}"></a>' for e, _, _ in members)
        rows = ["| name | description | parameters |", "|---|---|---|"]
        rows += [f"| `{e.name}` | {_cell(e.description)} | {_count_of(d)} |" for e, _, d in members]
        family = (inspect.getdoc(inspect.getmodule(members[0][0].obj)) or "").split("\n\n")[0]
        shared = _doc(members[0][0].obj).partition("\n")[2].strip()
        head = [anchors, "", f"### {title} ({len(members)} {members[0][0].kind}s)", "", family, "", shared]
        blocks.append([*head, *members[0][1], "", *rows])
    return blocks


def _anchor(e: Entry) -> str:
    return f"{e.kind}-" + "".join(c if c.isalnum() else "-" for c in e.name)


def _count_of(details: list[str]) -> str:
    return next((d.split("**")[2].strip(" .") for d in details if d.startswith("**Parameter count**")), "-")


# ----------------------------------------------------------------------------- blocks


def _net_block(e: Entry) -> tuple[list[str], list[str]]:
    """(parameters and ports: shared by a family, the count: each net's own)."""
    body = ["", *_param_table(e, skip=())]
    try:
        import torch

        from .nets.base import PortNet

        kwargs = {"num_classes": 100} if "num_classes" in e.parameters() else {}
        with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
            net = e.obj(**kwargs)
    except Exception as err:  # a net that needs more than its defaults: say so, keep documenting
        return [*body, "", f"**Ports**: not known without building it ({type(err).__name__}: {_first_line(err)})."], []
    if isinstance(net, PortNet):
        ports = " · ".join(_port(n, i) for n, i in net.port_info().items())
    else:
        ports = "`logits` (the module's output); read any submodule with `taps: {name: module.path}`"
    count = sum(p.numel() for p in net.parameters())
    return [*body, "", f"**Ports**: {ports}."], ["", f"**Parameter count** {count:,} (100 classes)."]


def _op_block(e: Entry) -> tuple[list[str], list[str]]:
    outputs = getattr(e.obj, "outputs", ("out",))
    dynamic = inspect.isclass(e.obj) and "self.outputs" in _source(e.obj)
    ports = "named when built, from its inputs (see above)" if dynamic else " · ".join(f"`{o}`" for o in outputs)
    return ["", *_param_table(e, skip=PLUMBING), "", f"**Ports**: {ports}."], []


def _loss_block(e: Entry) -> tuple[list[str], list[str]]:
    params = list(e.parameters())
    notes = []
    if "labels" in params:
        notes.append("reads `data.label`")
    if "sample_weight" in params:
        notes.append("takes per-sample weights (`sample_weight: PORT` on the edge)")
    skip = (*params[:2], *LOSS_INPUTS)  # pred and target are the edge's `to` and `from`
    body = ["", *_param_table(e, skip=skip)]
    if notes:
        body += ["", f"**Inputs**: `to` and `from` ports; {'; '.join(notes)}."]
    return body, []


def _param_table(e: Entry, skip: tuple[str, ...]) -> list[str]:
    params = [p for name, p in e.parameters().items() if name not in skip]
    if not params:
        return ["No parameters."]
    declared = e.declared()  # ranges (kdgraph/params.py): a column of their own where the entry declares them
    rows = ["| parameter | type | default | range |", "|---|---|---|---|"] if declared else []
    rows = rows or ["| parameter | type | default |", "|---|---|---|"]
    for p in params:
        kind = "" if p.annotation is p.empty else f"`{_cell(_annotation(p.annotation))}`"
        if p.name in FROM_DATA:
            default = "*from the data*"
        elif p.default is p.empty:
            default = "**required**"
        else:
            default = f"`{_cell(_yaml(p.default))}`"
        valid = f" {_cell(declared[p.name].describe())} |" if p.name in declared else (" |" if declared else "")
        rows.append(f"| `{p.name}` | {kind} | {default} |{valid}")
    return rows


# ----------------------------------------------------------------------------- formatting


def _port(name: str, info: PortInfo) -> str:
    what = [info.kind]
    if info.channels is not None:
        what.append(f"{info.channels} {'classes' if info.kind == 'logits' else 'ch'}")
    if info.stride is not None:
        what.append(f"stride {info.stride}")
    return f"`{name}` ({', '.join(what)})"


def _yaml(value: Any) -> str:
    """A default as it would be written in a graph file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return repr(value)


def _annotation(annotation: Any) -> str:
    """``float | Schedule`` whether the module postpones annotations (strings) or not."""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _doc(obj: Any) -> str:
    return inspect.getdoc(obj) or "(no description)"


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _first_line(err: BaseException) -> str:
    return (str(err).strip().split("\n")[0] or type(err).__name__)[:160]
