"""One registry per kind of graph element (nets, ops, losses, datasets), filled by decorators.

    @register_net("resnet8x4")
    def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module: ...

    @register_loss("kd", params={"T": real(gt=0), "reduction": choice("batchmean", "mean")})
    def kd(pred, target, *, T: float = 4.0, reduction: str = "batchmean"): ...

    @register_op("mix")
    class Mix(nn.Module): ...

    @register_dataset("digits")
    class Digits(DatasetSource): ...       # info(cfg, base_dir) and load(cfg, base_dir, seed)

The constructor's (or the function's) signature is the contract: the graph file's extra keys must
be among its keyword parameters; ``params=`` declares each one's type and range (kdgraph.params), which
``kdgraph validate`` checks. The first line of the docstring is the one-line description that
``kdgraph list`` prints. Filling the registries with the built-ins and plugins is ``kdgraph.catalog``'s
job: this module imports nothing of what it holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import did_you_mean


@dataclass(frozen=True)
class PortInfo:
    """What a port carries, known before any tensor exists, so adapters size themselves.

    kind: "logits" (N, classes), "vector" (N, C), "map" (N, C, H, W) or "any".
    channels: C (classes for logits); stride: input size / H for maps (None when unknown).
    """

    kind: str = "any"
    channels: int | None = None
    stride: int | None = None


@dataclass
class Entry:
    name: str
    obj: Callable[..., Any]
    kind: str
    description: str
    module: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> inspect.Signature:
        target = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        sig = inspect.signature(target)
        params = list(sig.parameters.values())
        if inspect.isclass(self.obj) and params and params[0].name == "self":
            params = params[1:]
        return sig.replace(parameters=params)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Keyword parameters a graph file may set (positional-only and *args excluded)."""
        return {
            p.name: p for p in self.signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def declared(self) -> dict[str, Any]:
        """Each parameter's declared type and range (``register_op("x", params={...})``, kdgraph.params)."""
        return dict(self.extra.get("params") or {})

    def accepts_any_keyword(self) -> bool:
        return any(p.kind == p.VAR_KEYWORD for p in self.signature.parameters.values())


class RegistryError(ValueError):
    """Raised for a duplicate registration or an unknown name."""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, **extra: Any) -> Callable[[Callable], Callable]:
        """Decorator: register a class or factory under ``name`` (default: its own name)."""

        def deco(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._entries:
                prev = self._entries[key]
                raise RegistryError(
                    f"{self.kind} {key!r} is registered twice: by {prev.module} and by {obj.__module__}"
                )
            doc = inspect.getdoc(obj) or ""
            self._entries[key] = Entry(key, obj, self.kind, doc.split("\n")[0].strip(), obj.__module__, extra)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self._entries)
            raise RegistryError(f"unknown {self.kind} {name!r}" + (f"; {hint}" if hint else "")) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def suggest(self, name: str) -> str | None:
        return did_you_mean(name, self._entries)


NETS = Registry("net")
OPS = Registry("op")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")

register_net = NETS.register
register_op = OPS.register
register_loss = LOSSES.register
register_dataset = DATASETS.register

REGISTRIES = {"nets": NETS, "ops": OPS, "losses": LOSSES, "datasets": DATASETS}
