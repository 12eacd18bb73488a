"""The output store: keys per (sample, variant), in memory and in files shared between runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.output_cache import MIN_ROWS, OutputCache, PortLayout, variant_ids, variants_of, weights_hash

from .conftest import KD_CNN, node_state


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


def _loader(n: int, batch: int, **kw):
    from kdgraph.data import Normalizer, TensorLoader
    from kdgraph.datasets.base import Split

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.zeros(n).long())
    norm = Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    return TensorLoader(split, batch, norm, torch.device("cpu"), train=True, augment=True, seed=3, **kw)


@pytest.mark.parametrize("kw", [{}, {"world": 2, "rank": 1}, {"limit_batches": 2}])
def test_drawn_names_the_samples_and_variants_the_epoch_yields(kw: dict) -> None:
    loader = _loader(10, 4, **kw)
    batches = list(loader.epoch(2))
    index, variant = loader.drawn(2)
    assert index.tolist() == torch.cat([b.index for b in batches]).tolist()
    assert variant.tolist() == torch.cat([b.variant for b in batches]).tolist()


def test_fill_keys_stores_the_crops_the_loader_makes_and_pads_a_small_pass() -> None:
    from types import SimpleNamespace

    from kdgraph.train.cache import ahead_epochs, fill_keys

    loader = _loader(40, 4)
    passes: list[torch.Tensor] = []

    def node_outputs(_name, x, _ports):  # a "net" whose output is its input image, flattened
        passes.append(x)
        return {"t.x": x.flatten(1)}

    graph = SimpleNamespace(node_outputs=node_outputs)
    acc = SimpleNamespace(device=torch.device("cpu"), autocast=torch.no_grad)
    cache = OutputCache({"t.x": PortLayout((3 * 8 * 8,), torch.float32)}, samples=40, variants=18)
    batch = next(iter(loader.epoch(1)))
    keys = cache.keys(batch.index, batch.variant)
    fill_keys(graph, "t", frozenset({"x"}), cache, loader, keys[:3], acc)
    assert [len(x) for x in passes] == [MIN_ROWS]  # 3 rows, padded with their own repeats
    assert cache.missing(keys).tolist() == [3]  # only the 3 asked for are stored
    assert torch.equal(cache.get(keys[:3], "cpu")["t.x"], batch.image[:3].flatten(1))  # the loader's crops
    passes.clear()
    fill_keys(graph, "t", frozenset({"x"}), cache, loader, torch.arange(300, 400), acc)
    assert [len(x) for x in passes] == [50, 50]  # 100 keys in two even passes of at most 64 (on a CPU)
    assert ahead_epochs(loader, torch.device("cpu")) == 2  # 64 rows a pass / 40 draws an epoch
    assert ahead_epochs(loader, torch.device("cuda")) == 7  # 256 / 40


# ----------------------------------------------------------------------------- in training runs



def _train(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, list[dict], list[int]]:
    """(student weights, logged losses, rows of each teacher forward) of one run."""
    from kdgraph.spec import load_spec
    from kdgraph.train import Trainer

    from .conftest import records

    path = tmp_path / "cache.yaml"
    path.write_text(KD_CNN)
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
    return node_state(state, "student"), losses, calls


def _close(a: tuple, b: tuple) -> float:
    (wa, la, _), (wb, lb, _) = a, b
    assert wa.keys() == wb.keys() and len(la) == len(lb) > 0
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    worst = max(worst, *(abs(x[k] - y[k]) for x, y in zip(la, lb) for k in x))
    assert worst <= 1e-5, worst
    return worst


def _drawn_pairs(seed: int, epochs: range, n: int = 24, pad: int = 1) -> set[tuple[int, int]]:
    """(sample, variant) pairs a training run draws, from the loader's documented generator per epoch."""
    side, pairs = 2 * pad + 1, set()
    for epoch in epochs:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # stage 0
        torch.randperm(n, generator=g)
        oy, ox = torch.randint(0, side, (n,), generator=g), torch.randint(0, side, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        pairs |= {(i, (int(oy[i]) * side + int(ox[i])) * 2 + int(flip[i])) for i in range(n)}
    return pairs


@pytest.mark.parametrize(
    ("augment", "fill"), [(False, "auto"), (True, "auto"), (True, "lazy")], ids=["plain", "ahead", "lazy"]
)
@pytest.mark.parametrize("mode", ["memory", "file"])
def test_a_cached_run_trains_as_an_uncached_one(tmp_path: Path, augment: bool, fill: str, mode: str) -> None:
    aug = f"data.augment={str(augment).lower()}"
    plain = _train(tmp_path, "plain", aug)
    cached = _train(tmp_path, "cached", aug, f"train.cache={mode}", f"train.cache_fill={fill}")
    _close(plain, cached)
    assert plain[2] == [8] * 9  # 3 epochs x 3 batches of 8 (the evaluation runs only the student)
    drawn = len(_drawn_pairs(0, range(1, 4)))
    if not augment:  # precomputed at the start (24 images, one pass), never run in a step
        assert cached[2] == [1, 24]  # sizing the store, the pass
    elif fill == "auto":  # ahead: the 3 epochs' draws (72 <= 2 x 64) in two even passes before the first epoch
        assert cached[2] == [1, drawn - drawn // 2, drawn // 2]
    else:  # lazy: each (image, crop, flip) the run draws, at most once, in the steps (topped up to 8 rows)
        assert sum(cached[2][1:]) >= drawn and len(cached[2]) <= 1 + 9


def test_an_ahead_filled_step_never_asks_the_store_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    asked = []
    missing = OutputCache.missing
    monkeypatch.setattr(OutputCache, "missing", lambda self, keys: asked.append(len(keys)) or missing(self, keys))
    _train(tmp_path, "cached", "train.cache=memory", "data.augment=true", "train.epochs=12")
    # epochs 1-3 are one fill (ceil(64 / 24) epochs of draws on a CPU), 4-6 the next, ...: one question each
    assert asked == [len(_drawn_pairs(0, range(e, e + 3))) for e in (1, 4, 7, 10)]


def test_a_second_run_of_one_teacher_reads_the_first_runs_file_cache(tmp_path: Path) -> None:
    fixed = ("train.cache=file", "data.augment=false")
    first = _train(tmp_path, "first", *fixed)
    second = _train(tmp_path, "second", *fixed, "train.optimizer.lr=0.1")  # a sweep over the student's lr
    assert first[2] == [1, 24] and second[2] == [1]  # the second run only sizes the store
    assert len(list((tmp_path / "cache" / "outputs").iterdir())) == 1  # one store, shared
    # a teacher with other weights (another seed draws another random teacher) is another store
    _train(tmp_path, "other", *fixed, "train.seed=1")
    assert len(list((tmp_path / "cache" / "outputs").iterdir())) == 2


def test_a_second_seed_computes_only_the_crops_the_first_did_not_draw(tmp_path: Path) -> None:
    first = tmp_path / "first"
    _train(tmp_path, "first", "data.augment=false")  # any weights: a fixed teacher for both seeds
    teacher = {"model": node_state(torch.load(first / "final.pt", weights_only=True)["graph"], "teacher")}
    torch.save(teacher, tmp_path / "teacher.pt")
    fixed = (
        "train.cache=file",
        "data.augment=true",
        "++data.seed=0",  # one dataset for both seeds
        f"++nodes.teacher.init={{checkpoint: {tmp_path / 'teacher.pt'}, key: model}}",
    )
    seed0 = _train(tmp_path, "seed0", *fixed, "train.seed=0")
    seed1 = _train(tmp_path, "seed1", *fixed, "train.seed=1")
    assert seed0[2][0] == 1 and sum(seed0[2][1:]) == len(_drawn_pairs(0, range(1, 4)))  # sizing, then the fill
    assert sum(seed1[2][1:]) == len(_drawn_pairs(1, range(1, 4)) - _drawn_pairs(0, range(1, 4)))
