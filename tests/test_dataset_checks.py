"""Datasets are values held to what they declare: bad arrays, hostile pickles and images are one clear line.

Each case here was accepted, truncated, hung or printed a worker's traceback before datasets checked
their arrays against a declared schema, the pickle walk kept a visited set, augmentation parameters
were bounded at validate time and unreadable images were carried out of the DataLoader workers.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdgraph.data import load_dataset
from kdgraph.errors import DataError, SpecError
from kdgraph.spec import DATA_DEFAULTS, load_spec, merge

REPO = Path(__file__).resolve().parent.parent

CIFAR_GRAPH = """\
kdgraph: 1
name: tiny
data: {dataset: cifar100, root: data, download: false, batch_size: 4, subset: 8}
nodes:
  student: {net: cnn, width: 2}
edges:
  - {loss: ce, from: data.label, to: student.logits}
"""

FOLDER_GRAPH = """\
kdgraph: 1
name: tiny
data: {dataset: imagefolder, root: pics, image_size: 16, loader: torchvision, workers: 0, batch_size: 4}
nodes:
  student: {net: cnn, width: 2}
edges:
  - {loss: ce, from: data.label, to: student.logits}
"""


def write_cifar100(root: Path, train: dict, test: dict | None = None) -> Path:
    """A cifar-100-python folder whose batch files hold the given dicts (pickled as the real ones are)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    good = {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    for name, entry in (("train", train), ("test", test or good)):
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder / "train"


def kdgraph(args: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Exit status and stderr of the real CLI as a process, `python -m kdgraph ARGS`, in `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "KDGRAPH_CACHE": str(cwd / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "kdgraph", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stderr


def cli(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Exit status and stderr of `kdgraph ARGS` run in this process (the CLI's own main), in `cwd`."""
    from kdgraph.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("KDGRAPH_CACHE", str(cwd / "cache"))
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def cifar_cfg(root: Path) -> dict:
    return merge(DATA_DEFAULTS, {"dataset": "cifar100", "root": str(root), "download": False})


# ----------------------------------------------------------------------------- arrays against the schema


def test_a_cifar_batch_with_fewer_labels_than_images_is_refused_by_the_cli(tmp_path: Path, monkeypatch) -> None:
    write_cifar100(tmp_path / "data", {b"data": np.zeros((8, 3072), np.uint8), b"fine_labels": [0, 1, 2]})
    (tmp_path / "g.yaml").write_text(CIFAR_GRAPH)
    code, err = cli(["run", "g.yaml", "train.epochs=1", "--out", "run"], tmp_path, monkeypatch)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("g.yaml:3: data.dataset: data/cifar-100-python/train: ")  # the graph's line, the batch file
    assert "8 images (key b'data') but 3 labels (key b'fine_labels')" in err
    assert "replace it with the original cifar100 file" in err


@pytest.mark.parametrize(
    "entry, says",
    [
        ({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0.0, 1.7, 2.2, 3.9]}, "are float64, not integers"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": np.array([0, 1, 2, 3.5])}, "not integers"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 100, 3]}, "label 100 (sample 2"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, -1, 2, 3]}, "label -1 (sample 1"),
        ({b"data": np.zeros((4, 1024), np.uint8), b"fine_labels": [0, 1, 2, 3]}, "is 1024, not the declared 3072"),
        ({b"data": np.zeros((4, 3072), np.int64), b"fine_labels": [0, 1, 2, 3]}, "are int64, not uint8"),
        ({b"data": np.zeros((4, 3072), np.uint8)}, "has no key b'fine_labels'"),
    ],
)
def test_cifar_arrays_are_checked_against_the_declared_schema(tmp_path: Path, entry: dict, says: str) -> None:
    bad = write_cifar100(tmp_path / "data", entry)
    with pytest.raises(DataError) as err:
        load_dataset(cifar_cfg(tmp_path / "data"), tmp_path)
    message = str(err.value)
    assert message.startswith(str(bad)) and says in message and "\n" not in message


@pytest.mark.slow
def test_float_labels_are_refused_by_the_cli_not_truncated(tmp_path: Path) -> None:
    labels = [0.0, 1.5, 2.0, 3.0]
    write_cifar100(tmp_path / "data", {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": labels})
    (tmp_path / "g.yaml").write_text(CIFAR_GRAPH)
    code, err = kdgraph(["run", "g.yaml", "train.epochs=1", "--out", "run"], tmp_path)
    assert code == 2 and "Traceback" not in err, err
    assert "cifar-100-python/train" in err and "key b'fine_labels' are float64, not integers" in err


def test_every_dataset_is_held_to_its_declared_info(tmp_path: Path) -> None:
    """A registered dataset (here a plugin's) that loads other than its info declares is refused, by name."""
    import torch

    from kdgraph.datasets.base import DataInfo, Dataset, Schema, Split, check_split

    schema = Schema.of(DataInfo(10, 3, 8))
    good = Split(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 9]))
    check_split(good, schema, "dataset 'x', train split", "fix it")
    for split, says in (
        (Split(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0.0, 1, 2, 3])), "float32, not integers"),
        (Split(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 3])), "1 x 8 x 8, not the declared"),
        (Split(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])), "float32, not uint8"),
        (Split(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 10])), "label 10 (sample 3"),
    ):
        with pytest.raises(DataError, match="^dataset 'x', train split: .*" + says.replace("(", r"\(")):
            check_split(split, schema, "dataset 'x', train split", "fix it")
    assert isinstance(Dataset, type)


# ----------------------------------------------------------------------------- pickles walked once per object


def shared_tree(levels: int, fan: int) -> list:
    """A list whose every level holds the same child `fan` times: a few bytes pickled, fan**levels paths."""
    tree: list = [0]
    for _ in range(levels):
        tree = [tree] * fan
    return tree


def test_a_pickle_of_shared_references_is_walked_once(tmp_path: Path) -> None:
    from kdgraph.safe_pickle import loads_data

    start = time.monotonic()
    loads_data(pickle.dumps(shared_tree(30, 4), protocol=2))  # 4**30 paths, 31 objects
    with pytest.raises(DataError, match="not a flat list of numbers"):  # and as labels: refused, not walked
        write_cifar100(tmp_path / "data", {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": shared_tree(30, 4)})
        load_dataset(cifar_cfg(tmp_path / "data"), tmp_path)
    assert time.monotonic() - start < 5


def test_the_pickle_walk_is_bounded_in_depth_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdgraph import safe_pickle
    from kdgraph.safe_pickle import UnsafePickleError, loads_data

    with pytest.raises(UnsafePickleError, match="deeper than a data file"):
        loads_data(pickle.dumps(shared_tree(60, 2), protocol=2))
    monkeypatch.setattr(safe_pickle, "MAX_OBJECTS", 100)
    assert len(loads_data(pickle.dumps([[7] * 60] * 8, protocol=2))) == 8  # one list shared: 68 values
    with pytest.raises(UnsafePickleError, match="more than 100 values"):
        loads_data(pickle.dumps([[7] * 60 for _ in range(8)], protocol=2))  # eight lists: 488


@pytest.mark.slow
def test_a_shared_reference_cifar_batch_is_refused_fast_by_the_cli(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "data", {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": shared_tree(30, 4)})
    (tmp_path / "g.yaml").write_text(CIFAR_GRAPH)
    code, err = kdgraph(["run", "g.yaml", "train.epochs=1", "--out", "run"], tmp_path, timeout=60)
    assert code == 2 and "Traceback" not in err, err
    assert "cifar-100-python/train" in err and "not a flat list of numbers" in err


# ----------------------------------------------------------------------------- augmentation parameters


VIEWS_GRAPH = """\
kdgraph: 1
name: views
data: {dataset: synthetic, size: 8, test_size: 4, image_size: 8, channels: 3, classes: 2, batch_size: 4, %s}
nodes:
  student: {net: cnn, width: 2, in: data.strong.image}
edges:
  - {loss: ce, from: data.label, to: student.logits}
"""


@pytest.mark.parametrize(
    "data, says",
    [
        ("views: {strong: {augment: [{randaugment: {num_ops: 1000000000}}]}}", "num_ops: 1000000000 is not an integer"),
        ("views: {strong: {augment: [{randaugment: {magnitude: 31}}]}}", "magnitude: 31 is not an integer in [0, 30]"),
        ("views: {strong: {augment: [{randaugment: {num_ops: 2.5}}]}}", "num_ops: 2.5 is not an integer"),
        ("views: {strong: {augment: [{crop: {pad: 100000}}]}}", "pad: 100000 is not an integer in [0, 512]"),
        ("views: {strong: {augment: [{flip: {p: 1.5}}]}}", "flip p: 1.5 is not a number in [0.0, 1.0]"),
        ("views: {strong: {augment: [{flip: {p: .nan}}]}}", "flip.p: must be a finite number, not .nan"),
        ("views: {strong: {augment: [{cutout: {size: 0}}]}}", "cutout size: 0 is not an integer in [1, 1024]"),
        ("views: {strong: {augment: [{cutout: {fill: 300}}]}}", "fill: 300 is not mean, or an integer in [0, 255]"),
        ("views: {strong: {augment: [{colorjitter: {hue: 0.9}}]}}", "hue: 0.9 is not a number in [0, 0.5]"),
        ("views: {strong: {augment: [{autoaugment: {policy: mnist}}]}}", "policy: 'mnist' is not one of the policies"),
        ("views: {strong: {augment: [" + ", ".join(["flip"] * 33) + "]}}", "33 steps; at most 32"),
        ("views: {strong: {augment: [flip]}}, std: [0.2, 0, 0.2]", "data.std[1]: must be greater than 0"),
        ("views: {strong: {augment: [flip]}}, mean: [0.5, 0.5], std: [0.2, 0.2, 0.2]", "3 std values for 2 means"),
    ],
)
def test_augmentation_and_normalisation_parameters_are_bounded_at_validate(tmp_path: Path, data: str, says: str):
    path = tmp_path / "g.yaml"
    path.write_text(VIEWS_GRAPH % data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert says in str(err.value) and "g.yaml:3" in str(err.value)


def test_randaugment_num_ops_1e9_is_refused_by_validate_and_in_range_values_pass(tmp_path: Path, monkeypatch):
    steps = (
        "[crop, {crop: {pad: 2}}, {flip: {p: 1}}, {cutout: {size: 4, fill: 0}}, {randaugment: {num_ops: 3, "
        "magnitude: 30}}, {colorjitter: {brightness: [0.5, 1.5], hue: 0.1}}]"
    )
    (tmp_path / "ok.yaml").write_text(VIEWS_GRAPH % f"views: {{strong: {{augment: {steps}}}}}, std: [0.2, 0.2, 0.2]")
    assert cli(["validate", "ok.yaml"], tmp_path, monkeypatch)[0] == 0  # the bounds leave every real recipe alone
    (tmp_path / "g.yaml").write_text(VIEWS_GRAPH % "views: {strong: {augment: [{randaugment: {num_ops: 1000000000}}]}}")
    code, err = cli(["validate", "g.yaml"], tmp_path, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    assert "num_ops: 1000000000 is not an integer in [0, 16]" in err


# ----------------------------------------------------------------------------- unreadable images


def write_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 4), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 14, 3), dtype=np.uint8)).save(root / part / cls / f"{i}.jpg")


def spoil(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "not an image":
        path.write_bytes(b"GIF89a but not really, just text\n" * 4)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        os.mkfifo(path)


def corrupt_folder_graph(tmp_path: Path) -> None:
    write_folder(tmp_path / "pics")
    spoil(tmp_path / "pics" / "train" / "dog" / "1.jpg", "truncated")
    (tmp_path / "g.yaml").write_text(FOLDER_GRAPH)


def assert_one_line_naming_the_image(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "worker" not in err, err
    lines = [line for line in err.splitlines() if "1.jpg" in line]
    assert len(lines) == 1 and lines[0].startswith("pics/train/dog/1.jpg: a corrupt or truncated image"), err
    assert lines[0].endswith("replace or remove the file"), err


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_in_an_imagefolder_is_one_line_from_the_main_process(tmp_path: Path, monkeypatch, workers):
    corrupt_folder_graph(tmp_path)
    code, err = cli(
        ["run", "g.yaml", "train.epochs=1", f"data.workers={workers}", "--out", "run"], tmp_path, monkeypatch
    )
    assert_one_line_naming_the_image(code, err)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_through_the_real_cli_process(tmp_path: Path, workers: int) -> None:
    corrupt_folder_graph(tmp_path)
    code, err = kdgraph(["run", "g.yaml", "train.epochs=1", f"data.workers={workers}", "--out", "run"], tmp_path)
    assert_one_line_naming_the_image(code, err)


@pytest.mark.parametrize("how", ["truncated", "not an image", "empty", "fifo"])
def test_every_unreadable_image_is_a_data_error_naming_it(tmp_path: Path, how: str) -> None:
    import torch

    from kdgraph.data import make_loaders
    from kdgraph.spec import TRAIN_DEFAULTS

    write_folder(tmp_path / "pics")
    bad = tmp_path / "pics" / "train" / "cat" / "2.jpg"
    spoil(bad, how)
    data = merge(
        DATA_DEFAULTS,
        {
            "dataset": "imagefolder",
            "root": "pics",
            "image_size": 16,
            "loader": "torchvision",
            "batch_size": 4,
            "workers": 0,
        },
    )
    train, _, test = make_loaders(load_dataset(data, tmp_path), data, TRAIN_DEFAULTS, torch.device("cpu"))
    assert len(list(test.epoch(1))) == 1  # the good split reads (and warms the imports the clock should not see)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        list(train.epoch(1))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert how != "fifo" or time.monotonic() - start < 5  # a FIFO is refused, never waited on


def test_a_fifo_in_place_of_a_cifar_batch_is_refused_not_waited_on(tmp_path: Path) -> None:
    bad = write_cifar100(tmp_path / "data", {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]})
    bad.unlink()
    os.mkfifo(bad)
    start = time.monotonic()
    with pytest.raises(DataError, match="is not a regular file") as err:
        load_dataset(cifar_cfg(tmp_path / "data"), tmp_path)
    assert str(bad) in str(err.value) and time.monotonic() - start < 5


def test_mean_and_std_give_one_value_or_one_per_channel() -> None:
    from kdgraph.data import normalization_of

    ds = load_dataset(
        merge(
            DATA_DEFAULTS,
            {"dataset": "synthetic", "size": 4, "test_size": 4, "image_size": 4, "channels": 3, "classes": 2},
        ),
        Path.cwd(),
    )
    assert normalization_of(ds, {"mean": [0.5], "std": [0.2]}) == ((0.5,), (0.2,))
    assert normalization_of(ds, {"mean": None, "std": [0.2, 0.3, 0.4]}) == (ds.mean, (0.2, 0.3, 0.4))
    with pytest.raises(DataError, match="data.mean has 2 values but the images have 3 channels"):
        normalization_of(ds, {"mean": [0.5, 0.5], "std": [0.2, 0.2]})
