"""docs/reference.md is generated from the registries; the committed file must be the current one."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from torch import nn

from kdgraph.docs import REGENERATE, _loss_block, _op_block, reference_markdown
from kdgraph.registry import LOSSES, NETS, OPS, register_loss, register_op

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


@pytest.fixture(scope="module")
def generated() -> str:
    """The reference as generated now, with an op of a plugin registered (it must not appear)."""

    @register_op("test_docs_plugin_op")
    class PluginOp(nn.Module):
        """Registered by a plugin."""

    try:
        return reference_markdown()
    finally:
        OPS.unregister("test_docs_plugin_op")


def test_committed_reference_is_current(generated: str) -> None:
    committed = REFERENCE.read_text() if REFERENCE.exists() else ""
    if generated != committed:
        diff = difflib.unified_diff(
            committed.splitlines(), generated.splitlines(), "committed", "generated", lineterm=""
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(f"docs/reference.md is out of date; regenerate it with `{REGENERATE}`\n{shown}")


def test_reference_lists_every_builtin_and_no_plugin(generated: str) -> None:
    assert "test_docs_plugin_op" not in generated
    for registry in (NETS, OPS, LOSSES):
        for entry in registry.entries():
            if entry.module.startswith("kdgraph."):
                assert f"| [`{entry.name}`](#" in generated


def test_parameters_and_ports_come_from_the_signature() -> None:
    @register_op("test_docs_op")
    class Op(nn.Module):
        """One line.

        More detail.
        """

        outputs = ("a", "b")

        def __init__(self, width: int, mode: str = "fast", in_info: list | None = None, num_classes: int = 10):
            super().__init__()

    @register_loss("test_docs_loss")
    def loss(pred, target, *, labels, T: float = 4.0, sample_weight=None):
        """A loss."""

    try:
        body, _ = _op_block(OPS.get("test_docs_op"))
        assert "| `width` | `int` | **required** |" in body
        assert '| `mode` | `str` | `"fast"` |' in body
        assert "| `num_classes` | `int` | *from the data* |" in body
        assert not any("in_info" in line for line in body)  # engine plumbing is not a parameter
        assert body[-1] == "**Ports**: `a` · `b`."
        body, _ = _loss_block(LOSSES.get("test_docs_loss"))
        assert [line for line in body if line.startswith("| `")] == ["| `T` | `float` | `4.0` |"]
        assert "reads `data.label`" in body[-1] and "sample_weight" in body[-1]
    finally:
        OPS.unregister("test_docs_op")
        LOSSES.unregister("test_docs_loss")
