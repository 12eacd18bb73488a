"""Named views: one batch's views share its samples, differ in pixels, and resume bitwise; graphs read them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.augment import ViewPipeline, make_views
from kdgraph.check import check_graph
from kdgraph.cli import main
from kdgraph.data import load_dataset, make_loaders
from kdgraph.errors import SpecError
from kdgraph.spec import load_spec
from kdgraph.train import Interrupted, Trainer

from .conftest import REPO, SMOKE, load, same

WEAK_STRONG = REPO / "tests" / "fixtures" / "views" / "weak_strong.yaml"
VIEWS = {
    "weak": {"augment": ["crop", "flip"]},
    "strong": {"augment": ["crop", "flip", "autoaugment", "randaugment", "trivialaugment", "colorjitter", "cutout"]},
}
TRAIN = {"seed": 3, "precision": "fp32"}


def loaders(kind: str, dataset: str = "synthetic"):
    cfg = {"dataset": dataset, "size": 48, "test_size": 8, "image_size": 8, "channels": 3, "classes": 4,
           "batch_size": 16, "loader": kind}
    ds = load_dataset(cfg, Path.cwd())
    views = make_views(VIEWS, ds.image_size, ds.mean)
    return make_loaders(ds, cfg, TRAIN, torch.device("cpu"), views=views)


@pytest.mark.parametrize("kind", ["host", "device"])
def test_views_share_samples_differ_in_pixels_and_resume_bitwise(kind: str) -> None:
    train, _, test = loaders(kind)
    batches = list(train.epoch(2))
    assert len(batches) == 3
    for b in batches:
        assert set(b.views) == {"weak", "strong"}
        for v in b.views.values():  # one batch: the same samples (labels, indices) in every view
            assert v.shape == b.image.shape
        assert not torch.equal(b.views["weak"], b.views["strong"])
        assert not torch.equal(b.views["weak"], b.image)  # its own draws, not the default view's
    # the labels are those of the indices: every view is of the batch's samples
    split = train.split
    assert all(torch.equal(b.label, split.labels[b.index]) for b in batches)
    resumed = list(train.epoch(2, start=1))  # a run resumed after one batch
    for a, r in zip(batches[1:], resumed):
        assert torch.equal(a.index, r.index) and torch.equal(a.label, r.label)
        assert all(torch.equal(a.views[v], r.views[v]) for v in a.views)
        assert torch.equal(a.image, r.image)
    again = list(train.epoch(2))
    assert all(torch.equal(x.views["strong"], y.views["strong"]) for x, y in zip(batches, again))
    other = list(train.epoch(3))
    assert not torch.equal(other[0].views["strong"], batches[0].views["strong"])
    assert all(not b.views for b in test.epoch(1))  # evaluation: no views (each reads the plain image)


def test_default_view_unchanged_by_declaring_views() -> None:
    with_views, _, _ = loaders("host")
    cfg = {"dataset": "synthetic", "size": 48, "test_size": 8, "image_size": 8, "channels": 3, "classes": 4,
           "batch_size": 16}
    ds = load_dataset(cfg, Path.cwd())
    plain, _, _ = make_loaders(ds, cfg, TRAIN, torch.device("cpu"))
    assert all(torch.equal(a.image, b.image) for a, b in zip(with_views.epoch(1), plain.epoch(1)))


def test_crop_flip_cutout_by_hand() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    p = ViewPipeline("v", {"augment": [{"crop": {"pad": 1}}, "flip", {"cutout": {"size": 2, "fill": 0}}]}, 4, (0.5,))
    draws = [{"oy": torch.tensor([0, 1]), "ox": torch.tensor([2, 1])}, {"flip": torch.tensor([True, False])},
             {"cy": torch.tensor([0, 2]), "cx": torch.tensor([0, 2])}]
    out = p.apply(images, torch.arange(2), torch.arange(2), draws)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    want0 = padded[0, :, 0:4, 2:6].flip(-1).clone()
    want0[:, 0:1, 0:1] = 0  # square [cy - 1, cy + 1) clipped at the top-left corner
    want1 = padded[1, :, 1:5, 1:5].clone()  # offset (1, 1) with pad 1: the image itself
    want1[:, 1:3, 1:3] = 0
    assert torch.equal(out[0], want0) and torch.equal(out[1], want1)
    mean_fill = ViewPipeline("v", {"augment": [{"cutout": {"size": 2}}]}, 4, (0.5,))
    filled = mean_fill.apply(images, torch.arange(2), torch.arange(2), draws[2:])
    assert filled[1, 0, 1, 1].item() == 128  # round(255 * 0.5): the dataset mean, zero after normalisation


def test_torchvision_steps_are_seeded_per_image_and_leave_the_global_rng_alone() -> None:
    p = ViewPipeline("strong", {"augment": ["autoaugment"]}, 8, (0.5,) * 3)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    draws = p.draws(6, seed=0, stage=0, epoch=1)
    state = torch.get_rng_state()
    a = p.apply(images, torch.arange(6), torch.arange(6), draws)
    assert torch.equal(torch.get_rng_state(), state)
    b = p.apply(images[[3, 1]], torch.tensor([3, 1]), torch.tensor([3, 1]), draws)  # another batch composition
    assert torch.equal(a[[3, 1]], b)


def test_a_graph_with_two_views_validates_and_plans_naming_each_view(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(WEAK_STRONG)]) == 0
    assert main(["plan", str(WEAK_STRONG)]) == 0
    out = capsys.readouterr().out
    assert "view weak: crop, flip  (port data.weak.image)" in out
    rows = {line.split()[1]: line.split()[-1] for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert rows == {"teacher": "weak", "student": "strong"}


def test_view_mistakes_are_one_clear_problem_each(tmp_path: Path) -> None:
    bad = WEAK_STRONG.read_text().replace("in: data.strong.image", "in: data.strog.image").replace(
        "autoaugment", "autoaugmnt")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    text = str(e.value)
    assert "augment[2]: unknown augmentation 'autoaugmnt' (did you mean 'autoaugment'" in text
    assert "nodes.student.in: data has no port 'strog.image' (did you mean 'strong.image'" in text
    with pytest.raises(SpecError, match="'image' is a data port, not a view name"):
        load_spec(WEAK_STRONG, ["+data.views.image={augment: [flip]}"])
    with pytest.raises(SpecError, match="augmentation 'cutout' has no parameter 'side'"):
        load_spec(WEAK_STRONG, ["data.views.weak.augment=[{cutout: {side: 3}}]"])
    with pytest.raises(SpecError, match="views need the tensor loaders"):
        load_spec(WEAK_STRONG, ["+data.loader=torchvision"])


def test_evaluation_and_outputs_feed_every_view_the_plain_image() -> None:
    _, graph = check_graph(WEAK_STRONG, dry=False)
    graph.eval()
    x = torch.randn(2, 1, 8, 8)
    out = graph.evaluate(x)
    assert torch.allclose(out["student.logits"], graph.nodes["student"](x))
    assert torch.allclose(out["teacher.logits"], graph.nodes["teacher"](x))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_weak_strong_graph_trains_and_resumes_bitwise(dataset: str, tmp_path: Path) -> None:
    overrides = [f"data.dataset={dataset}", "train.epochs=2", "++train.checkpoint_every=3"]
    if dataset == "synthetic":
        overrides += [o for o in SMOKE if "dataset" not in o and "limit" not in o] + ["++data.size=24",
                                                                                      "++data.image_size=8"]
    spec = load_spec(WEAK_STRONG, overrides)
    Trainer(spec, tmp_path / "straight", log=lambda *_: None).run()
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "resumed", log=lambda *_: None, stop_after=5).run()
    Trainer(spec, tmp_path / "resumed", log=lambda *_: None, resume=True).run()
    assert same(load(tmp_path / "straight" / "final.pt"), load(tmp_path / "resumed" / "final.pt"))


def test_mlkd_plan_names_the_view_of_each_network_and_call(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(REPO / "graphs" / "mlkd.yaml")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split()[-1] for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert rows["teacher"] == rows["student"] == "weak"
    assert rows["teacher_strong"] == rows["student_strong"] == "strong"  # the same weights on the other view
    assert "view strong: crop, flip, randaugment(num_ops=2, magnitude=10), cutout(size=8)" in out
