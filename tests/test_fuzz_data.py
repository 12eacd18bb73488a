"""Fuzzing the dataset readers through `kdgraph run`: image folders and CIFAR pickles built from their grammar.

An imagefolder root (train/ and val/, a folder per class) is filled with good 8x8 PNGs and a few
hostile entries: zero-byte, truncated or random-byte images, a PNG header declaring a gigapixel image,
a FIFO, a directory or a link to /dev/zero named like an image. A fake CIFAR-10 folder holds batches
whose arrays disagree (8 images and 3 labels), float or out-of-range labels, the wrong dtype or
shape, a pickle of shared references nested deep (walked naively, 10^18 visits), a pickle that calls
``os.system`` or imports a module when loaded, a truncated pickle, a FIFO. One epoch must end in exit
0 or exit 2 naming the file, within the time bound; the sentinel folder is never touched.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ._fuzz import assert_clean, changed, fuzz_settings, make_sentinel, run_cli, snapshot

pytestmark = pytest.mark.fuzz
NETS = """\
nodes:
  teacher: {net: cnn, width: 4, frozen: true}
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
train: {epochs: 1, optimizer: {type: sgd, lr: 0.05}, log_every: 1, progress: false}
deploy: student.logits
"""


def png(size: int = 8, color: int = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (color, 255 - color, 7)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR declaring side x side pixels, with one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


BAD_IMAGES = ["zero", "truncated", "random", "bomb", "fifo", "directory", "dev_zero", "text", "link_out"]


def _bad_image(path: Path, how: str, data: st.DataObject, sentinel: Path) -> None:
    if how == "zero":
        path.write_bytes(b"")
    elif how == "truncated":
        good = png()
        path.write_bytes(good[: data.draw(st.integers(1, len(good) - 1), label="keep")])
    elif how == "random":
        path.write_bytes(data.draw(st.binary(min_size=1, max_size=256), label="bytes"))
    elif how == "bomb":
        path.write_bytes(png_bomb(data.draw(st.sampled_from([30_000, 100_000, 1 << 20]), label="side")))
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "dev_zero":
        path.symlink_to("/dev/zero")
    elif how == "link_out":
        path.symlink_to(sentinel / "notes.txt")
    else:
        path.write_text("not an image\n")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_data")
    (root / "work").mkdir()
    (root / "cache").mkdir()
    make_sentinel(root / "sentinel")
    (root / "sentinel" / "evil.py").write_text("from pathlib import Path\nPath(__file__).with_suffix('.RAN').touch()\n")
    return root


def _run(ws: Path, graph: str) -> None:
    (ws / "work" / "g.yaml").write_text(graph)
    shutil.rmtree(ws / "work" / "r", ignore_errors=True)
    before = snapshot(ws / "sentinel")
    env = {"KDGRAPH_CACHE": str(ws / "cache"), "KDGRAPH_DATA": str(ws / "work" / "data")}
    outcome = run_cli(["run", "g.yaml", "--out", "r", "-q"], ws / "work", env)
    assert_clean(outcome, names=("data/", "/data", "data:"))
    touched = changed(before, snapshot(ws / "sentinel"))
    assert not touched, f"files outside the run folder changed: {touched}\n{outcome.describe()}"


@fuzz_settings(8)
@given(data=st.data())
def test_image_folders(ws: Path, data: st.DataObject) -> None:
    root = ws / "work" / "data"
    shutil.rmtree(root, ignore_errors=True)
    classes = data.draw(st.integers(1, 3), label="classes")
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(data.draw(st.integers(0, 3), label="good images")):
                (folder / f"ok{i}.png").write_bytes(png(8, 40 * i + c))
    for i in range(data.draw(st.integers(1, 2), label="bad images")):
        split = data.draw(st.sampled_from(["train", "val"]), label="split")
        c = data.draw(st.integers(0, classes - 1), label="class")
        suffix = data.draw(st.sampled_from([".png", ".jpg", ".JPEG", ".bmp"]), label="suffix")
        _bad_image(
            root / split / f"c{c}" / f"bad{i}{suffix}", data.draw(st.sampled_from(BAD_IMAGES)), data, ws / "sentinel"
        )
    workers = data.draw(st.sampled_from([0, 0, 1]), label="workers")
    graph = (
        "kdgraph: 1\nname: fuzz_images\n"
        f"data: {{dataset: imagefolder, root: data, image_size: 8, batch_size: 4, workers: {workers}}}\n" + NETS
    )
    _run(ws, graph)


def _batch(data: st.DataObject, sentinel: Path, name: str) -> bytes:
    """One CIFAR-10 batch pickle, good or damaged in one way."""
    n = data.draw(st.integers(0, 8), label=f"{name} images")
    images = np.random.default_rng(n).integers(0, 255, (n, 3072), dtype=np.uint8)
    labels: object = [i % 10 for i in range(n)]
    how = data.draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "few_labels",
                "float_labels",
                "big_labels",
                "negative_labels",
                "float_images",
                "wrong_shape",
                "no_labels",
                "not_a_dict",
                "shared_refs",
                "os_system",
                "import",
                "truncated",
                "huge_count",
                "nan_images",
                "string_labels",
            ]
        ),
        label=f"{name} how",
    )
    entry: object = {b"data": images, b"labels": labels}
    if how == "few_labels":
        entry = {b"data": images, b"labels": labels[: max(0, n - data.draw(st.integers(1, 5)))]}
    elif how == "float_labels":
        entry = {b"data": images, b"labels": [i + 0.7 for i in labels]}
    elif how == "big_labels":
        entry = {b"data": images, b"labels": [10**20 if i == 0 else i for i in labels]}
    elif how == "negative_labels":
        entry = {b"data": images, b"labels": [-1 for _ in labels]}
    elif how == "string_labels":
        entry = {b"data": images, b"labels": ["cat" for _ in labels]}
    elif how == "float_images":
        entry = {b"data": images.astype(np.float64) * 1e300, b"labels": labels}
    elif how == "nan_images":
        entry = {b"data": np.full((n, 3072), np.nan), b"labels": labels}
    elif how == "wrong_shape":
        entry = {b"data": images.reshape(-1)[: max(0, n * 3072 - 5)], b"labels": labels}
    elif how == "no_labels":
        entry = {b"data": images}
    elif how == "not_a_dict":
        entry = [images, labels]
    elif how == "shared_refs":
        shared: list = [0, 1]
        for _ in range(60):
            shared = [shared, shared]
        entry = {b"data": images, b"labels": labels, b"extra": shared}
    elif how == "huge_count":
        entry = {b"data": images, b"labels": labels, b"num": 10**30}
    if how == "os_system":
        return (
            b"\x80\x02cos\nsystem\nq\x00X"
            + struct.pack("<I", len(f"touch {sentinel}/PWNED"))
            + f"touch {sentinel}/PWNED".encode()
            + b"q\x01\x85q\x02Rq\x03."
        )
    if how == "import":
        return b"cevil\nx\n."  # GLOBAL evil.x: importing the sentinel's module would run it
    blob = pickle.dumps(entry, protocol=2)
    if how == "truncated":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="keep")]
    return blob


@fuzz_settings(8)
@given(data=st.data())
def test_cifar_pickles(ws: Path, data: st.DataObject) -> None:
    where = ws / "work" / "data" / "cifar-10-batches-py"
    shutil.rmtree(ws / "work" / "data", ignore_errors=True)
    where.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if data.draw(st.integers(0, 15), label=f"{name} special") == 0:
            os.mkfifo(where / name)
            continue
        (where / name).write_bytes(_batch(data, ws / "sentinel", name))
    (where / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}))
    subset = data.draw(st.sampled_from(["", ", subset: 8"]), label="subset")
    graph = f"kdgraph: 1\nname: fuzz_cifar\ndata: {{dataset: cifar10, root: data, batch_size: 4{subset}}}\n" + NETS
    _run(ws, graph.replace("net: cnn, width: 4", "net: cnn, width: 2"))
