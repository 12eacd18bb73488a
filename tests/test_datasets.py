"""The dataset registry: built-ins say their shape without loading, and a plugin file adds a dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdgraph.catalog import load_builtins
from kdgraph.check import check_graph
from kdgraph.data import data_info, load_dataset
from kdgraph.datasets.base import DataInfo
from kdgraph.registry import DATASETS
from kdgraph.spec import DATA_DEFAULTS, merge

PLUGIN = '''\
import torch
from kdgraph import register_dataset
from kdgraph.datasets.base import DataInfo, Dataset, DatasetSource, Split


@register_dataset("stripes_test")
class Stripes(DatasetSource):
    """Horizontal (0) or vertical (1) stripes, 1x8x8."""

    def info(self, cfg, base_dir):
        return DataInfo(2, 1, 8)

    def load(self, cfg, base_dir, seed):
        rows = (torch.arange(8) % 2 * 255).to(torch.uint8)
        horizontal = rows[:, None].expand(8, 8)
        images = torch.stack([horizontal, horizontal.t()] * 6)[:, None]
        labels = torch.tensor([0, 1] * 6)
        return Dataset("stripes_test", Split(images[:8], labels[:8]), Split(images[8:], labels[8:]), 2, (0.5,), (0.5,))
'''

GRAPH = """\
kdgraph: 1
name: stripes
plugins: [stripes.py]
data: {dataset: stripes_test, batch_size: 4, augment: false}
nodes:
  student: {net: mlp, hidden: [4]}
edges:
  - {loss: ce, from: data.label, to: student.logits}
"""


@pytest.fixture
def plugin_graph(tmp_path: Path):
    (tmp_path / "stripes.py").write_text(PLUGIN)
    (tmp_path / "g.yaml").write_text(GRAPH)
    yield tmp_path / "g.yaml"
    DATASETS.unregister("stripes_test")
    for name in [m for m in sys.modules if m.startswith("kdgraph_plugin_stripes")]:
        del sys.modules[name]


def test_the_builtins_are_registered() -> None:
    load_builtins()
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "imagefolder", "synthetic"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dataset": "digits"}, DataInfo(10, 1, 8)),  # sklearn's 8x8 grey digits
        ({"dataset": "synthetic", "classes": 5, "channels": 2, "image_size": 6, "size": 12}, DataInfo(5, 2, 6)),
    ],
)
def test_info_without_loading_matches_the_loaded_data(data: dict, expected: DataInfo, tmp_path: Path) -> None:
    cfg = merge(DATA_DEFAULTS, data)
    assert data_info(cfg, tmp_path) == expected
    assert load_dataset(cfg, tmp_path).info == expected


def test_cifar_info_is_known_without_the_files(tmp_path: Path) -> None:
    assert data_info(merge(DATA_DEFAULTS, {"dataset": "cifar100"}), tmp_path) == DataInfo(100, 3, 32)
    assert data_info(merge(DATA_DEFAULTS, {"dataset": "cifar10"}), tmp_path) == DataInfo(10, 3, 32)


def test_a_plugin_file_registers_a_dataset_a_graph_can_use(plugin_graph: Path) -> None:
    spec, graph = check_graph(plugin_graph)  # loads the plugin, checks the name, builds and dry-runs
    assert graph.data_info == DataInfo(2, 1, 8)
    data = load_dataset(spec.data, spec.base_dir)
    assert (len(data.train), len(data.test)) == (8, 4)
    assert data.train.labels.tolist() == [0, 1] * 4
    assert data.train.images[1, 0, 0].tolist() == [0, 255, 0, 255, 0, 255, 0, 255]  # vertical stripes
