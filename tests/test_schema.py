"""The JSON Schema of the graph file documents every property it declares."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from kdgraph.spec import SCHEMA_PATH


def undocumented(node: Any, path: str = "") -> list[str]:
    missing = []
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            if not isinstance(sub, dict) or "description" not in sub:
                missing.append(f"{path}.{name}")
        for key, sub in node.items():
            missing += undocumented(sub, f"{path}.{key}" if key != "properties" else path)
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += undocumented(sub, f"{path}[{i}]")
    return missing


def test_schema_is_valid_and_fully_described() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert undocumented(schema) == []
