"""The output store: keys per (sample, variant), in memory and in files shared between runs."""

from __future__ import annotations

from pathlib import Path

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
