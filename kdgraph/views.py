"""Named views of one sample: ``data.views`` in a graph file, its ports, and its checks (no torch here).

    data:
      dataset: cifar100
      views:
        weak:   {augment: [crop, flip]}
        strong: {augment: [crop, flip, autoaugment]}

Each view is its own augmentation pipeline applied to the same samples of a batch (same labels,
same indices), published as the port ``data.<view>.image``; ``data.image`` stays the default view
(crop and flip when ``data.augment``). A node reads a view with ``in: data.strong.image``. Steps
are names, or one-key mappings with parameters: ``{cutout: {size: 8}}``, ``{randaugment:
{num_ops: 2, magnitude: 10}}``. What each step does is in ``kdgraph.augment``; evaluation (and
export) feeds every view the plain test image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import Problem, did_you_mean

# step -> its parameters and their defaults (None: chosen from the image size, see kdgraph.augment)
AUGMENTS: dict[str, dict[str, Any]] = {
    "crop": {"pad": None},
    "flip": {"p": 0.5},
    "cutout": {"size": None, "fill": "mean"},
    "autoaugment": {"policy": "cifar10"},
    "randaugment": {"num_ops": 2, "magnitude": 9},
    "trivialaugment": {},
    "colorjitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0},
}
AUGMENT_DOCS = {
    "crop": "random crop with zero padding `pad` (default: 4 on 32x32, 1 on 8x8), torchvision's RandomCrop(padding)",
    "flip": "horizontal flip with probability `p`",
    "cutout": "a `size` x `size` square (default half the side), centred uniformly and clipped at the border, "
    "filled with the dataset mean (`fill: mean`) or a uint8 value (DeVries & Taylor, arXiv:1708.04552)",
    "autoaugment": "torchvision AutoAugment, `policy` cifar10 (the CIFAR policy), imagenet or svhn "
    "(Cubuk et al., arXiv:1805.09501)",
    "randaugment": "torchvision RandAugment, `num_ops` ops at `magnitude` (Cubuk et al., arXiv:1909.13719)",
    "trivialaugment": "torchvision TrivialAugmentWide (Müller & Hutter, arXiv:2103.10146)",
    "colorjitter": "torchvision ColorJitter(brightness, contrast, saturation, hue)",
}
RESERVED = ("image", "label", "index")  # the default ports: not view names
POLICIES = ("cifar10", "imagenet", "svhn")
MAX_VIEWS, MAX_STEPS = 16, 32  # every step runs on every image of every batch: bounded work


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_in(low: int, high: int, auto: bool = False) -> Callable[[Any], str | None]:
    """An integer in [low, high] (None too when `auto`: chosen from the image size)."""

    def check(value: Any) -> str | None:
        if auto and value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"an integer in [{low}, {high}]" + (" (or null: from the image size)" if auto else "")

    return check


def _real_in(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda value: None if _number(value) and low <= value <= high else f"a number in [{low}, {high}]"


def _jitter(low: float, high: float, centre: float) -> Callable[[Any], str | None]:
    """torchvision ColorJitter's factor: v in [0, high] (the range centre +- v), or a pair [lo, hi] within bounds."""

    def check(value: Any) -> str | None:
        if _number(value) and 0 <= value <= high:
            return None
        if isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value):
            if low <= value[0] <= value[1] <= centre + high:
                return None
        return f"a number in [0, {high}] or a pair [lo, hi] with {low} <= lo <= hi <= {centre + high}"

    return check


def _fill(value: Any) -> str | None:
    return None if value == "mean" or _int_in(0, 255)(value) is None else "mean, or an integer in [0, 255]"


def _policy(value: Any) -> str | None:
    return None if value in POLICIES else "one of the policies: " + ", ".join(POLICIES)


# step -> parameter -> what a value must be (None when it is one, else the requirement)
PARAMETER_CHECKS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "crop": {"pad": _int_in(0, 512, auto=True)},
    "flip": {"p": _real_in(0.0, 1.0)},
    "cutout": {"size": _int_in(1, 1024, auto=True), "fill": _fill},
    "autoaugment": {"policy": _policy},
    "randaugment": {"num_ops": _int_in(0, 16), "magnitude": _int_in(0, 30)},  # torchvision's 31 magnitude bins
    "trivialaugment": {},
    "colorjitter": {
        "brightness": _jitter(0.0, 10.0, 1.0),
        "contrast": _jitter(0.0, 10.0, 1.0),
        "saturation": _jitter(0.0, 10.0, 1.0),
        "hue": _jitter(-0.5, 0.5, 0.0),
    },
}


def view_names(data: dict[str, Any]) -> list[str]:
    """The views a `data:` section declares, in file order."""
    views = data.get("views") or {}
    return list(views) if isinstance(views, dict) else []


def view_port(name: str) -> str:
    return f"data.{name}.image"


def view_of_port(port: str) -> str | None:
    """'data.weak.image' -> 'weak'; 'data.image' -> 'image' (the default view); anything else: None."""
    parts = port.split(".")
    if parts[0] != "data":
        return None
    if parts[1:] == ["image"]:
        return "image"
    return parts[1] if len(parts) == 3 and parts[2] == "image" else None


def steps_of(view: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A view's pipeline as (step, parameters with defaults filled in) pairs."""
    out = []
    for step in view.get("augment") or []:
        name, params = (step, {}) if isinstance(step, str) else next(iter(step.items()))
        out.append((name, {**AUGMENTS.get(name, {}), **(params or {})}))
    return out


def describe(view: dict[str, Any]) -> str:
    """'crop, flip, autoaugment' (a step's non-default parameters in parentheses)."""
    shown = []
    for step in view.get("augment") or []:
        if isinstance(step, str):
            shown.append(step)
        else:
            name, params = next(iter(step.items()))
            inner = ", ".join(f"{k}={v}" for k, v in (params or {}).items())
            shown.append(f"{name}({inner})" if inner else name)
    return ", ".join(shown) or "no augmentation"


def data_port_problem(name: str, data: dict[str, Any]) -> tuple[str, str] | None:
    """(why, hint) when `data.<name>` is not a data port, else None; `name` is what follows `data.`."""
    if name in RESERVED:
        return None
    views = view_names(data)
    head, _, tail = name.partition(".")
    if head in views and tail == "image":
        return None
    known = data_port_names(data)
    if head in views:
        return f"view {head!r} publishes only 'data.{head}.image'", f"write data.{head}.image"
    return f"data has no port {name!r}", did_you_mean(name, known) or "data ports: " + ", ".join(known)


def data_port_names(data: dict[str, Any]) -> list[str]:
    """Every data port name after `data.` (for did-you-mean)."""
    return [*RESERVED, *(f"{v}.image" for v in view_names(data))]


def view_problems(data: dict[str, Any], problem: Callable[..., Problem]) -> list[Problem]:
    """Unknown steps or parameters, reserved view names, bad values: each one problem at its path."""
    views = data.get("views") or {}
    found: list[Problem] = []
    if not isinstance(views, dict):
        return [problem(("data", "views"), "views maps a view name to {augment: [...]}")]
    if views and (data.get("loader") == "torchvision" or data.get("dataset") == "imagefolder"):
        found.append(
            problem(
                ("data", "views"),
                "views need the tensor loaders (imagefolder streams through torchvision)",
                "set data.loader: host or device, on an in-memory dataset",
            )
        )
    if len(views) > MAX_VIEWS:
        found.append(problem(("data", "views"), f"{len(views)} views; at most {MAX_VIEWS}", "drop views no node reads"))
    for vname, view in views.items():
        path = ("data", "views", vname)
        if vname in RESERVED:
            found.append(problem(path, f"{vname!r} is a data port, not a view name", "call the view e.g. weak"))
        if not isinstance(view, dict):
            found.append(problem(path, "a view is {augment: [steps]}"))
            continue
        steps = view.get("augment") or []
        if not isinstance(steps, list):
            found.append(problem((*path, "augment"), "augment lists the steps", "e.g. augment: [crop, flip]"))
            continue
        if len(steps) > MAX_STEPS:
            found.append(problem((*path, "augment"), f"{len(steps)} steps; at most {MAX_STEPS}"))
            continue
        for i, step in enumerate(steps):
            where = (*path, "augment", i)
            if isinstance(step, dict) and len(step) == 1:
                name, params = next(iter(step.items()))
            elif isinstance(step, str):
                name, params = step, {}
            else:
                found.append(problem(where, "a step is a name or {name: {parameters}}", "e.g. {cutout: {size: 8}}"))
                continue
            if name not in AUGMENTS:
                found.append(
                    problem(
                        where,
                        f"unknown augmentation {name!r}",
                        did_you_mean(name, list(AUGMENTS)) or "augmentations: " + ", ".join(AUGMENTS),
                    )
                )
                continue
            if not isinstance(params, dict):
                found.append(problem(where, f"the parameters of {name!r} are a mapping"))
                continue
            for key, value in params.items():
                if key not in AUGMENTS[name]:
                    known = ", ".join(AUGMENTS[name]) or "none"
                    found.append(
                        problem(
                            (*where, name, key),
                            f"augmentation {name!r} has no parameter {key!r}",
                            did_you_mean(key, list(AUGMENTS[name])) or f"its parameters: {known}",
                        )
                    )
                elif (need := PARAMETER_CHECKS[name][key](value)) is not None:
                    default = AUGMENTS[name][key]
                    found.append(
                        problem(
                            (*where, name, key),
                            f"{name} {key}: {value!r} is not {need}",
                            f"the default is {'chosen from the image size' if default is None else default}",
                        )
                    )
    return found


def normalisation_problems(data: dict[str, Any], problem: Callable[..., Problem]) -> list[Problem]:
    """`data.mean` and `data.std`: one value each per channel (same lengths).

    Finiteness and std > 0 are the schema's and the number walker's (kdgraph/spec/numbers.py), once.
    """
    mean, std = data.get("mean"), data.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) != len(std):
        return [
            problem(
                ("data", "std"), f"{len(std)} std values for {len(mean)} means", "give one mean and one std per channel"
            )
        ]
    return []


def node_views(nodes: dict[str, Any]) -> dict[str, list[str]]:
    """Per node (a mapping name -> NodeSpec), the views it reads directly: ['weak'], ['image'], or []."""
    out = {}
    for name, node in nodes.items():
        seen = [v for v in (view_of_port(p) for p in node.inputs) if v is not None]
        out[name] = list(dict.fromkeys(seen))
    return out


def reference_section() -> list[str]:
    """The views section of docs/reference.md (kdgraph.docs appends it)."""
    out = [
        "## Views",
        "",
        "`data.views: {NAME: {augment: [STEP, ...]}}` declares named views of the same samples: in one batch every "
        "view has the same samples (labels, indices), each with its own augmentation, and publishes the port "
        "`data.NAME.image`; `data.image` stays the default view (crop and flip when `data.augment`). Any node's "
        "`in:` may read any view. Random choices are drawn per sample and epoch from (seed, stage, epoch, view), "
        "so runs are reproducible and resume bitwise; evaluation and export feed every view the plain image. "
        "Tensor loaders only (`data.loader: host` or `device`; on `device` the steps run on the accelerator). "
        "A step is a name or `{NAME: {parameter: value}}`, applied in order to uint8 images:",
        "",
        "| step | parameters (defaults) | what it does |",
        "|---|---|---|",
    ]
    for name, params in AUGMENTS.items():
        shown = ", ".join(f"`{k}: {'auto' if v is None else v}`" for k, v in params.items()) or "none"
        out.append(f"| `{name}` | {shown} | {AUGMENT_DOCS[name]} |")
    return out
