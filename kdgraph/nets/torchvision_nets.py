"""Every torchvision classification model by name, as ``tv/<name>`` (``tv/resnet18``, ``tv/convnext_tiny``...).

The list comes from ``torchvision.models.list_models(module=torchvision.models)``, so a new
torchvision release brings its new models with it. It is read once per torchvision version and kept
in kdgraph's cache (``kdgraph/cache.py``): torchvision itself is imported only when a model is built.

Design choice: these are the plain torchvision ``nn.Module`` objects (not ``PortNet``), so their
state-dict keys and module paths are exactly torchvision's. The engine takes ``forward``'s output
as the ``logits`` port; features are read with ``taps: {name: module.path}`` (forward hooks), e.g.
``layer4`` of ``tv/resnet18`` or ``features.7`` of ``tv/convnext_tiny``.

``num_classes`` gives a fresh classifier. ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V1"`` or a full
``"ResNet18_Weights.IMAGENET1K_V1"``) loads torchvision's ImageNet weights, but only from the torch
hub cache (``$TORCH_HOME/hub/checkpoints``): kdgraph never downloads. With ``num_classes`` other
than 1000 the ImageNet classifier is replaced by a fresh one; with ``in_channels`` other than 3
the first 3-channel convolution is rebuilt (pretrained kernels summed or tiled, as timm does).
Models that assert a fixed input size (ViT, MaxViT) need ``image_size``-compatible data.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..cache import read_meta, write_meta
from ..errors import CheckpointError
from ..registry import register_net


def _tvm() -> Any:
    """torchvision.models, imported when a model is built (its import costs seconds: not for every start)."""
    from torchvision import models

    return models

# why: without weights their train-mode forward returns a namedtuple with auxiliary logits, and they
# warn about a changing default init; the weights path of torchvision already drops the aux heads
_NO_WEIGHTS_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def resolve_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum member for ``weights`` (member name or ``Enum.MEMBER``)."""
    enum = _tvm().get_model_weights(name)
    member = weights.split(".")[-1]
    if member not in enum.__members__:
        known = ", ".join(enum.__members__)
        raise CheckpointError(f"tv/{name}: unknown weights {weights!r}; torchvision offers {known}")
    return enum[member]


def cached_weights_path(weights: Any) -> str:
    """Where torch.hub keeps (and torchvision looks for) the file of a weights enum member."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))


def _require_cached(name: str, weights: Any) -> None:
    path = cached_weights_path(weights)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"tv/{name}: weights {weights} are not on disk; kdgraph never downloads. Expected {path}. "
            f"Fetch {weights.url} and place it there (mkdir -p {os.path.dirname(path)} && "
            f"curl -L -o {path} {weights.url}), or set TORCH_HOME to a folder whose hub/checkpoints holds it."
        )


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def replace_classifier(model: nn.Module, old_classes: int, num_classes: int) -> int:
    """Swap every Linear / 1x1-conv head with ``old_classes`` outputs for a fresh one; returns how many."""
    heads = [
        (path, m)
        for path, m in model.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == old_classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == old_classes)  # SqueezeNet's conv classifier
    ]
    for path, m in heads:
        if isinstance(m, nn.Linear):
            new: nn.Module = nn.Linear(m.in_features, num_classes, bias=m.bias is not None)
        else:
            new = nn.Conv2d(m.in_channels, num_classes, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
        _replace(model, path, new)
    return len(heads)


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Rebuild the first 3-channel Conv2d for ``in_channels``, keeping pretrained kernels meaningful."""
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(
                in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                bias=m.bias is not None, padding_mode=m.padding_mode,
            )
            with torch.no_grad():
                w = m.weight
                if in_channels == 1:  # grey input: the sum of the RGB kernels sees the same response
                    new.weight.copy_(w.sum(1, keepdim=True))
                else:  # tile RGB and rescale so activations keep their magnitude
                    reps = math.ceil(in_channels / 3)
                    new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (3 / in_channels))
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            _replace(model, path, new)
            return
    raise ValueError(f"no 3-channel Conv2d found to adapt to in_channels={in_channels}")


def build_torchvision(
    name: str, num_classes: int = 100, in_channels: int = 3, weights: str | None = None, **kwargs: Any
) -> nn.Module:
    """Build torchvision's ``name``; see the module docstring for ``weights`` and the head."""
    tvm = _tvm()
    if weights is None:
        model = tvm.get_model(name, weights=None, **{**_NO_WEIGHTS_DEFAULTS.get(name, {}), **kwargs},
                              num_classes=num_classes)
    else:
        member = resolve_weights(name, weights)
        _require_cached(name, member)
        try:  # torchvision loads straight from the hub cache when the file is there
            model = tvm.get_model(name, weights=member, **kwargs)
        except Exception as e:  # a corrupt or foreign file in the cache: one line naming it
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"tv/{name}: cannot load {cached_weights_path(member)} ({msg})") from None
        old = len(member.meta["categories"])
        if num_classes != old and not replace_classifier(model, old, num_classes):
            raise CheckpointError(f"tv/{name}: found no {old}-way classifier to replace")
    if in_channels != 3:
        adapt_input_channels(model, in_channels)
        if getattr(model, "transform_input", False):  # GoogLeNet / Inception re-normalise RGB only
            model.transform_input = False
    return model


def _factory(name: str, offered: str, version: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 100, in_channels: int = 3, weights: str | None = None, **kwargs: Any) -> nn.Module:
        return build_torchvision(name, num_classes, in_channels, weights, **kwargs)

    build.__name__ = build.__qualname__ = f"tv_{name}"
    build.__doc__ = (
        f"torchvision {name} {version} (plain nn.Module; weights: {offered}).\n\n"
        "Ports: logits only (taps by module path). ``weights`` loads from the torch hub cache only."
    )
    return build


def catalogue() -> tuple[str, dict[str, str]]:
    """torchvision's version and {model: weights offered}, read from the cache once written for that version."""
    try:
        version = importlib.metadata.version("torchvision").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    name = f"torchvision-{version}-models.json"
    known = read_meta(name)
    if isinstance(known, dict) and known:
        return version, known
    tvm = _tvm()
    models: dict[str, str] = {}
    for model in tvm.list_models(module=tvm):
        try:
            models[model] = ", ".join(tvm.get_model_weights(model).__members__)
        except Exception:  # a future model without an ImageNet weights enum still registers
            models[model] = "none"
    write_meta(name, models)
    return version, models


_VERSION, _MODELS = catalogue()
for _name, _offered in _MODELS.items():
    register_net(f"tv/{_name}")(_factory(_name, _offered, _VERSION))
