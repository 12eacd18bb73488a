"""Verified stores: a damaged, swapped or foreign cache entry is recomputed or refused, never used.

train.cache's file stores (row digests bound to (sample, variant) and to the store's key, the key in
cache.json, sizes against the layout, rows written with ordinary writes), the dependency cache of
``init: {from:}`` (keyed by the whole dataset, final.pt checked against its recorded SHA-256).
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.errors import CheckpointError, DataError
from kdgraph.output_cache import OutputCache, PortLayout

from .conftest import KD_CNN, node_state
from .test_data import write_fake_cifar100
from .test_output_cache import _close, _train

PORTS = {"t.logits": PortLayout((3,), torch.float32), "t.feat": PortLayout((2,), torch.bfloat16)}


def _store(folder: Path, key: str = "k" * 20) -> OutputCache:
    return OutputCache(PORTS, samples=4, variants=2, folder=folder, key=key)


def _filled(folder: Path) -> OutputCache:
    cache = _store(folder)
    keys = torch.arange(8)
    cache.put(keys, {"t.logits": torch.arange(24.0).view(8, 3) + 1, "t.feat": torch.ones(8, 2)})
    return cache


def _rows(path: Path, row_bytes: int) -> list[bytes]:
    blob = path.read_bytes()
    return [blob[i : i + row_bytes] for i in range(0, len(blob), row_bytes)]


# ----------------------------------------------------------------------------- the store on its own


def test_a_zeroed_or_moved_row_is_reported_missing(tmp_path: Path) -> None:
    _filled(tmp_path / "s")
    rows = _rows(tmp_path / "s" / "t.logits.bin", 12)
    rows[2] = bytes(12)  # zeroed (its digest kept)
    rows[5], rows[6] = rows[6], rows[5]  # two samples' rows swapped, with their digests below
    (tmp_path / "s" / "t.logits.bin").write_bytes(b"".join(rows))
    digests = _rows(tmp_path / "s" / "digests.bin", 8)
    digests[5], digests[6] = digests[6], digests[5]
    (tmp_path / "s" / "digests.bin").write_bytes(b"".join(digests))
    again = _store(tmp_path / "s")
    assert again.missing(torch.arange(8)).tolist() == [2, 5, 6]
    assert again.rejected == 3 and again.missing(torch.arange(8)).tolist() == [2, 5, 6]  # now unmarked
    assert torch.equal(again.get(torch.tensor([0, 7]), "cpu")["t.logits"][1], torch.tensor([22.0, 23.0, 24.0]))


def test_a_values_file_of_the_wrong_size_is_recomputed_not_read_as_zeros(tmp_path: Path) -> None:
    _filled(tmp_path / "s")
    path = tmp_path / "s" / "t.logits.bin"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    again = _store(tmp_path / "s")
    assert path.stat().st_size == 8 * 12 and again.repaired and "t.logits.bin has 40 bytes" in again.repaired[0]
    assert again.missing(torch.arange(8)).tolist() == list(range(8)) and not again.complete()


def test_a_store_written_for_another_key_is_refused(tmp_path: Path) -> None:
    _filled(tmp_path / "a")
    with pytest.raises(DataError, match=r"was written for the store 'kkkk.*', not 'other"):
        _store(tmp_path / "a", key="other")  # e.g. two teachers' folders swapped


def test_a_gather_of_unchecked_rows_is_refused(tmp_path: Path) -> None:
    _filled(tmp_path / "s")
    with pytest.raises(DataError, match="no check has passed"):
        _store(tmp_path / "s").get(torch.tensor([1]), "cpu")


def _full(*_args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_when_a_store_is_allocated_is_one_error_and_no_store(tmp_path: Path, monkeypatch) -> None:
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", _full)
    with pytest.raises(DataError, match="no space left on the device of .* while storing teacher outputs"):
        _store(tmp_path / "s")  # every file is allocated before it is mapped: no SIGBUS in a write later
    assert not (tmp_path / "s" / "cache.json").exists()  # not a store: the next run starts it again
    monkeypatch.setattr(os, "posix_fallocate", real)
    cache = _filled(tmp_path / "s")
    assert cache.complete() and all(os.stat(f).st_blocks * 512 >= os.stat(f).st_size for f in cache.folder.iterdir())


# ----------------------------------------------------------------------------- in training runs


def _store_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "cache" / "outputs").iterdir()
    return folder


def _damage(folder: Path, how: str) -> None:
    values = folder / "teacher.logits.bin"
    blob = bytearray(values.read_bytes())
    row = 4 * 4  # 4 classes of float32
    if how == "truncated":
        values.write_bytes(bytes(blob[: len(blob) // 2]))
    elif how == "zeroed":
        blob[: 5 * row] = bytes(5 * row)  # the first five samples' logits
        values.write_bytes(bytes(blob))
    else:  # swapped: samples 0 and 1 trade rows (and their digests, where there are any)
        blob[:row], blob[row : 2 * row] = blob[row : 2 * row], blob[:row]
        values.write_bytes(bytes(blob))
        digests = folder / "digests.bin"
        if digests.exists():
            d = bytearray(digests.read_bytes())
            d[:8], d[8:16] = d[8:16], d[:8]
            digests.write_bytes(bytes(d))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "zeroed", "swapped"])
def test_a_damaged_store_is_recomputed_and_the_student_trains_as_uncached(tmp_path: Path, how: str) -> None:
    fixed = ("data.augment=false", "train.epochs=2")
    plain = _train(tmp_path, "plain", *fixed)
    _train(tmp_path, "first", *fixed, "train.cache=file")
    _damage(_store_folder(tmp_path), how)
    again = _train(tmp_path, "again", *fixed, "train.cache=file")
    _close(plain, again)
    assert len(again[2]) > 1  # the damaged rows were computed again (more than sizing the store)


@pytest.mark.slow
def test_two_teachers_stores_swapped_are_refused(tmp_path: Path) -> None:
    fixed = ("data.augment=false", "train.epochs=1", "train.cache=file")
    _train(tmp_path, "a", *fixed)
    _train(tmp_path, "b", *fixed, "train.seed=1")  # another random teacher: another store
    a, b = sorted((tmp_path / "cache" / "outputs").iterdir())
    a.rename(tmp_path / "tmp")
    b.rename(a)
    (tmp_path / "tmp").rename(b)
    with pytest.raises(DataError, match="was written for the store"):
        _train(tmp_path, "again", *fixed)


def _cifar_project(root: Path, seed: int, n: int = 128) -> Path:
    """A project folder with its own ./data: a fake CIFAR-100 of `n` random images drawn from `seed`."""
    write_fake_cifar100(root / "data", n_train=n, n_test=16)
    _edit_train(root, lambda entry: entry.update({b"data": np.random.default_rng(seed).integers(0, 256, (n, 3072))}))
    return root


def _edit_train(root: Path, edit) -> None:
    train = root / "data" / "cifar-100-python" / "train"
    with open(train, "rb") as fh:
        entry = pickle.load(fh)
    edit(entry)
    entry[b"data"] = np.asarray(entry[b"data"], dtype=np.uint8)
    with open(train, "wb") as fh:
        pickle.dump(entry, fh)


CIFAR_KD = KD_CNN.replace(
    "data: {dataset: synthetic, size: 24, test_size: 8, image_size: 8, channels: 3, classes: 4, batch_size: 8}",
    "data: {dataset: cifar100, batch_size: 32, augment: false}",
).replace("epochs: 3", "epochs: 1")


@pytest.mark.slow
def test_a_store_is_keyed_by_every_image_of_the_dataset(tmp_path: Path, monkeypatch) -> None:
    """Two projects whose data differ in one image the old key's sample skipped share no store."""
    from kdgraph.spec import load_spec
    from kdgraph.train import Trainer

    monkeypatch.delenv("KDGRAPH_DATA")

    def run(project: Path, name: str, *overrides: str) -> dict:
        monkeypatch.chdir(project)
        (project / "kd.yaml").write_text(CIFAR_KD)
        Trainer(load_spec(project / "kd.yaml", list(overrides)), project / name, log=lambda *_: None).run()
        return node_state(torch.load(project / name / "final.pt", weights_only=True)["graph"], "student")

    a = _cifar_project(tmp_path / "a", seed=1)
    b = tmp_path / "b"
    shutil.copytree(a / "data", b / "data")
    # image 1 inverted: the same labels and file size, and not in the old key's sample of every other image
    _edit_train(b, lambda entry: entry[b"data"].__setitem__(1, 255 - entry[b"data"][1]))
    run(a, "cached", "train.cache=file")
    cached = run(b, "cached", "train.cache=file")
    plain = run(b, "plain")
    assert all(torch.equal(cached[k], plain[k]) for k in plain)
    assert len(list((tmp_path / "cache" / "outputs").iterdir())) == 2


TEACHER = """\
kdgraph: 1
name: proj_teacher
data: {dataset: cifar100, batch_size: 32, augment: false}
nodes:
  teacher: {net: mlp, hidden: [8]}
edges:
  - {loss: ce, from: data.label, to: teacher.logits}
train: {epochs: 1, progress: false}
deploy: teacher.logits
"""

STUDENT = """\
kdgraph: 1
name: proj_student
data: {dataset: cifar100, batch_size: 32, augment: false}
nodes:
  teacher: {net: mlp, hidden: [8], frozen: true, init: {from: teacher.yaml}}
  student: {net: mlp, hidden: [4]}
edges:
  - {loss: kd, from: teacher.logits, to: student.logits}
train: {epochs: 1, progress: false}
deploy: student.logits
"""


def _student_run(project: Path, name: str, monkeypatch) -> list[str]:
    from kdgraph.check import check_graph
    from kdgraph.train import Trainer

    monkeypatch.chdir(project)
    (project / "teacher.yaml").write_text(TEACHER)
    (project / "student.yaml").write_text(STUDENT)
    spec, _ = check_graph(project / "student.yaml", [], dry=False)
    lines: list[str] = []
    Trainer(spec, project / name, log=lines.append).run()
    return lines


@pytest.mark.slow
def test_two_projects_with_one_cache_do_not_share_a_teacher(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KDGRAPH_DATA")  # each project reads its own ./data
    a = _student_run(_cifar_project(tmp_path / "a", seed=1), "run", monkeypatch)
    b = _student_run(_cifar_project(tmp_path / "b", seed=2), "run", monkeypatch)
    assert any("training teacher.yaml first" in line for line in a)
    assert any("training teacher.yaml first" in line for line in b)  # not "reusing" a's
    assert len(list((tmp_path / "cache").glob("proj_teacher-*/final.pt"))) == 2
    again = _student_run(tmp_path / "a", "run2", monkeypatch)  # the same project: its own teacher again
    assert any("reusing teacher.yaml" in line for line in again)


@pytest.mark.slow
def test_a_swapped_final_pt_of_a_dependency_is_not_loaded(tmp_path: Path, monkeypatch) -> None:
    from kdgraph.cli import main

    monkeypatch.delenv("KDGRAPH_DATA")
    project = _cifar_project(tmp_path / "a", seed=1)
    _student_run(project, "run", monkeypatch)
    (final,) = (tmp_path / "cache").glob("proj_teacher-*/final.pt")
    other = torch.load(final, weights_only=True)
    other["graph"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["graph"].items()}
    torch.save(other, final)  # another teacher's weights, the same architecture
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        _student_run(project, "run2", monkeypatch)
    code = main(["run", str(project / "student.yaml"), "--out", str(project / "run3")])
    assert code == 2


@pytest.mark.slow
def test_a_full_disk_during_a_training_runs_store_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from kdgraph.cli import main

    fixed = ("train.epochs=1", "data.augment=false")
    (tmp_path / "kd.yaml").write_text(KD_CNN)
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", _full)
    code = main(["run", str(tmp_path / "kd.yaml"), *fixed, "train.cache=file", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no space left on the device" in err, err
    monkeypatch.setattr(os, "posix_fallocate", real)  # space again: the store that was cut short is consistent
    _close(_train(tmp_path, "plain", *fixed), _train(tmp_path, "cached", *fixed, "train.cache=file"))


def test_a_damaged_fixed_weights_file_of_the_same_name_is_written_again(tmp_path: Path) -> None:
    from kdgraph.train.fixed_weights import FixedWeights, merged

    fixed, state = FixedWeights(), {"nodes.t.w": torch.arange(4.0)}
    ref = fixed.write(tmp_path, state, new=True)
    path = tmp_path / ref["file"]
    path.write_bytes(path.read_bytes()[:-7])  # cut short (a crash, a full disk, a bad copy)
    again = FixedWeights().write(tmp_path, state, new=True)  # the next run's first save names the same file
    assert again == ref
    assert torch.equal(merged(tmp_path, {"fixed": again, "graph": {}})["nodes.t.w"], state["nodes.t.w"])


def test_the_dataset_fingerprint_sees_every_file_and_setting(tmp_path: Path) -> None:
    from kdgraph.fingerprint import dataset_fingerprint

    write_fake_cifar100(tmp_path / "data", n_train=8, n_test=4)
    cfg = {"dataset": "cifar100", "root": "data", "batch_size": 8}
    first = dataset_fingerprint(cfg, tmp_path)
    assert dataset_fingerprint({**cfg, "batch_size": 64, "workers": 4}, tmp_path) == first  # not the samples
    assert dataset_fingerprint({**cfg, "subset": 4}, tmp_path) != first
    meta = tmp_path / "data" / "cifar-100-python" / "meta"
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 1))  # one file, one nanosecond
    assert dataset_fingerprint(cfg, tmp_path) != first
    shutil.copytree(tmp_path / "data", tmp_path / "copy", copy_function=shutil.copy2)  # same bytes and mtimes
    assert dataset_fingerprint({**cfg, "root": "copy"}, tmp_path) != dataset_fingerprint(cfg, tmp_path)
