"""Shared test setup: every test runs in its own working directory with its own teacher cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GRAPHS = REPO / "graphs"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDGRAPH_DATA", str(tmp_path / "data"))


# overrides that turn any CIFAR graph into a seconds-long smoke run on synthetic data
SMOKE = [
    "++data.dataset=synthetic",
    "++data.size=8",
    "++data.test_size=4",
    "++data.batch_size=2",
    "++data.eval_batch_size=4",
    "++train.limit_batches=2",
    "++train.limit_eval_batches=1",
    "++train.progress=false",
]
