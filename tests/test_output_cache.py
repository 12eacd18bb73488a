"""The output store: keys per (sample, variant), in memory and in files shared between runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.output_cache import OutputCache, PortLayout, variant_ids, variants_of, weights_hash


def test_every_crop_and_flip_has_its_own_variant() -> None:
    pad = 4
    oy, ox, flip = torch.meshgrid(torch.arange(9), torch.arange(9), torch.arange(2), indexing="ij")
    ids = variant_ids(oy.flatten(), ox.flatten(), flip.flatten().bool(), pad)
    assert variants_of(pad, augment=True) == 162 == len(set(ids.tolist()))
    assert ids.min() == 0 and ids.max() == 161
    assert variants_of(pad, augment=False) == 1


def test_store_and_gather_in_memory() -> None:
    cache = OutputCache({"t.logits": PortLayout((3,), torch.float32)}, samples=4, variants=2)
    keys = cache.keys(torch.tensor([0, 3, 2]), torch.tensor([1, 0, 1]))
    assert keys.tolist() == [1, 6, 5]
    assert cache.missing(keys).tolist() == [0, 1, 2]
    values = torch.arange(9.0).view(3, 3)
    cache.put(keys[:2], {"t.logits": values[:2]})
    assert cache.missing(keys).tolist() == [2]
    assert torch.equal(cache.get(keys[:2], "cpu")["t.logits"], values[:2])
    assert not cache.complete()


def test_a_file_cache_is_shared_by_a_second_store_on_the_same_folder(tmp_path: Path) -> None:
    ports = {"t.logits": PortLayout((2,), torch.float32), "t.feat": PortLayout((1, 2, 2), torch.bfloat16)}
    first = OutputCache(ports, samples=3, variants=1, folder=tmp_path / "k")
    keys = torch.tensor([2, 0])
    outs = {"t.logits": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "t.feat": torch.ones(2, 1, 2, 2)}
    first.put(keys, outs)
    second = OutputCache(ports, samples=3, variants=1, folder=tmp_path / "k")  # e.g. the next seed's run
    assert second.missing(torch.tensor([0, 1, 2])).tolist() == [1]
    got = second.get(keys, "cpu")
    assert torch.equal(got["t.logits"], outs["t.logits"]) and got["t.feat"].dtype == torch.bfloat16
    assert torch.equal(second.to("cpu").get(keys, "cpu")["t.logits"], outs["t.logits"])


def test_weights_hash_follows_the_weights() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert weights_hash(a) != weights_hash(b)


# ----------------------------------------------------------------------------- in training runs

GRAPH = """\
kdgraph: 1
name: cache
data: {dataset: synthetic, size: 24, test_size: 8, image_size: 8, channels: 3, classes: 4, batch_size: 8}
nodes:
  teacher: {net: cnn, width: 4, frozen: true}
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
train:
  epochs: 3
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 1
  progress: false
deploy: student.logits
"""


def _train(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, list[dict], int]:
    from kdgraph.spec import load_spec
    from kdgraph.train import Trainer

    from .conftest import node_state, records

    path = tmp_path / "cache.yaml"
    path.write_text(GRAPH)
    trainer = Trainer(load_spec(path, list(overrides)), tmp_path / name, log=lambda *_: None)
    calls = []
    trainer._prepare()
    teacher = trainer.graph.nodes["teacher"]
    forward_ports = teacher.forward_ports

    def counted(*args, **kwargs):  # the step calls a zoo net's forward_ports directly (no module hooks)
        calls.append(len(args[0]))
        return forward_ports(*args, **kwargs)

    teacher.forward_ports = counted
    trainer.run()
    state = torch.load(tmp_path / name / "final.pt", weights_only=True)["graph"]
    losses = [r["losses"] for r in records(tmp_path / name) if r["kind"] == "train"]
    return node_state(state, "student"), losses, sum(calls)


def _close(a: tuple, b: tuple) -> float:
    (wa, la, _), (wb, lb, _) = a, b
    assert wa.keys() == wb.keys() and len(la) == len(lb) > 0
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    worst = max(worst, *(abs(x[k] - y[k]) for x, y in zip(la, lb) for k in x))
    assert worst <= 1e-5, worst
    return worst


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("mode", ["memory", "file"])
def test_a_cached_run_trains_as_an_uncached_one(tmp_path: Path, augment: bool, mode: str) -> None:
    aug = f"data.augment={str(augment).lower()}"
    plain = _train(tmp_path, "plain", aug)
    cached = _train(tmp_path, "cached", aug, f"train.cache={mode}")
    _close(plain, cached)
    assert plain[2] == 3 * 24  # 3 epochs of 24 images: the teacher saw every image every epoch
    if not augment:  # precomputed at the start (24 images), never run in a step
        assert cached[2] == 1 + 24
    else:  # each (image, crop, flip) the run draws, at most once
        assert cached[2] <= 1 + 3 * 24


def test_a_second_run_of_one_teacher_reads_the_first_runs_file_cache(tmp_path: Path) -> None:
    fixed = ("train.cache=file", "data.augment=false")
    first = _train(tmp_path, "first", *fixed)
    second = _train(tmp_path, "second", *fixed, "train.optimizer.lr=0.1")  # a sweep over the student's lr
    assert first[2] == 1 + 24 and second[2] == 1  # the second run only sizes the store
    assert len(list((tmp_path / "cache" / "outputs").iterdir())) == 1  # one store, shared
    # a teacher with other weights (another seed draws another random teacher) is another store
    _train(tmp_path, "other", *fixed, "train.seed=1")
    assert len(list((tmp_path / "cache" / "outputs").iterdir())) == 2
