"""Recipes against the reference code: facts of RepDistiller / mdistiller / ATS-LargeKD / CTKD written as numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from kdgraph.data import Dataset, Split
from kdgraph.ops.adapters import Connector
from kdgraph.registry import PortInfo

from .conftest import GRAPHS


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ConvReg(s_shape, t_shape) of RepDistiller models/util.py and mdistiller distillers/_common.py, counted by
# hand: conv weights + conv bias + BN (weight, bias). (student side, teacher side, conv kind, kernel, params)
CONVREG = [
    (8, 8, nn.Conv2d, 1, 128 * 128 + 128 + 2 * 128),  # equal: 16,768 (resnet8x4 -> resnet32x4 feat2)
    (16, 8, nn.Conv2d, 3, 128 * 128 * 9 + 128 + 2 * 128),  # halve: 3x3 stride 2
    (4, 8, nn.ConvTranspose2d, 4, 128 * 128 * 16 + 128 + 2 * 128),  # double: transposed 4x4 stride 2
    (12, 8, nn.Conv2d, 5, 128 * 128 * 25 + 128 + 2 * 128),  # larger by 4: kernel 1 + 12 - 8
]


@pytest.mark.parametrize("s_side, t_side, kind, k, params", CONVREG)
def test_connector_is_convreg(s_side: int, t_side: int, kind: type, k: int, params: int) -> None:
    info = [PortInfo("map", 128, 48 // s_side), PortInfo("map", 128, 48 // t_side)]  # strides on 48 px
    con = Connector(relu=True, in_info=info, image_size=48)
    conv = con.body[0]
    assert type(conv) is kind and conv.kernel_size == (k, k) and conv.bias is not None
    assert n_params(con) == params
    x, ref = torch.randn(2, 128, s_side, s_side), torch.randn(2, 128, t_side, t_side)
    assert con(x, ref).shape == ref.shape
    assert (con(x, ref) >= 0).all()  # the ReLU


def test_connector_rejects_what_convreg_rejects() -> None:
    info = [PortInfo("map", 16, 8), PortInfo("map", 16, 1)]  # 4x4 student, 32x32 teacher: x8, not x2
    with pytest.raises(ValueError, match="factor other than 2"):
        Connector(in_info=info, image_size=32)


def test_fitnet_plan_shows_16768(capsys: pytest.CaptureFixture[str]) -> None:
    from kdgraph.cli import main

    assert main(["plan", str(GRAPHS / "fitnet.yaml")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "op connector" in line)
    assert "16,768" in row


# --- drop_last ------------------------------------------------------------------------------------


def cifar_sized(n: int) -> Dataset:
    """A 50,000-image training split as a broadcast view: its length is real, its memory one image."""
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8).expand(n, -1, -1, -1)
    split = Split(images, torch.zeros(n, dtype=torch.int64))
    return Dataset("cifar100", split, Split(images[:10], split.labels[:10]), 100, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("kind", ["host", "device", "torchvision"])
@pytest.mark.parametrize("drop_last, steps", [(False, 782), (True, 781)])
def test_steps_per_epoch(kind: str, drop_last: bool, steps: int) -> None:
    from kdgraph.data import make_loaders

    cfg = {"batch_size": 64, "eval_batch_size": 64, "loader": kind, "workers": 0, "drop_last": drop_last}
    train, fit, test = make_loaders(cifar_sized(50_000), cfg, {}, torch.device("cpu"))
    assert len(train) == steps  # ceil(50000 / 64) = 782 as RepDistiller / mdistiller; DIST's 781
    assert len(fit) == 782  # evaluation-mode passes keep every sample


def test_drop_last_default_is_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    from kdgraph.cli import main

    assert main(["validate", "--resolved", str(GRAPHS / "kd.yaml")]) == 0
    assert "drop_last: false" in capsys.readouterr().out


def test_a_partial_batch_too_small_for_batchnorm_is_dropped() -> None:
    from kdgraph.data import _batch_count

    assert _batch_count(65, 64, False, None) == 2  # evaluation: every sample
    assert _batch_count(65, 64, False, None, world=1) == 1  # one sample cannot train BatchNorm
    assert _batch_count(66, 64, False, None, world=1) == 2
    assert _batch_count(67, 64, False, None, world=2) == 1  # shards of 2 and 1
    assert _batch_count(68, 64, False, None, world=2) == 2


# --- ATS (lxcnju/ATS-LargeKD) -----------------------------------------------------------------------

# WSKDLR (tools.py) with ws_step 5, Tm 120, step 30, stepped after each epoch, so epoch e sees t = e - 1:
# (t + 1e-6) / 5 for t <= 5, 1 for t <= 120, 0.1 ** int((t - 120) / 30) after; written out per epoch
ATS_LR_FACTOR = {
    1: 2e-7,
    2: 0.2000002,
    6: 1.0000002,
    7: 1.0,
    121: 1.0,
    150: 1.0,
    151: 0.1,
    180: 0.1,
    181: 0.01,
    211: 0.001,
    240: 0.001,
}


def test_ats_lr_schedule_is_wskdlr() -> None:
    from kdgraph.spec import load_spec
    from kdgraph.train import group_lr

    spec = load_spec(GRAPHS / "ats.yaml")
    cfg = spec.stages[0].train
    assert (spec.data["batch_size"], cfg["epochs"], cfg["optimizer"]["lr"]) == (128, 240, 0.05)
    for epoch, factor in ATS_LR_FACTOR.items():
        assert group_lr(0.05, cfg["lr_schedule"], epoch, 240) == pytest.approx(0.05 * factor, rel=1e-12), epoch


def test_ats_loss_is_the_reference_formula() -> None:
    """0.5 CE + 0.5 KL(q_t || softmax(z_s)); the code's soft cross-entropy minus the teacher's entropy."""
    from kdgraph.losses.basic import kd
    from kdgraph.ops.logits import ClassTemperature

    zs = 3 * torch.sin(torch.arange(40.0, dtype=torch.float64)).reshape(4, 10)
    zt = 5 * torch.cos(0.7 * torch.arange(40.0, dtype=torch.float64) + 0.3).reshape(4, 10)
    y = torch.tensor([1, 3, 5, 7])
    taus = torch.full_like(zt, 2.0)
    taus[torch.arange(4), y] = 4.0  # tau1 on the target, tau2 elsewhere (distill.py)
    q = (zt / taus).softmax(1)
    soft_ce = -(q * zs.log_softmax(1)).sum(1).mean()  # the code's KD term with s_tau = 1
    entropy = -(q * q.log()).sum(1).mean()
    T = ClassTemperature(T_target=4.0, T_other=2.0, num_classes=10)(y).to(torch.float64)
    assert kd(zs, zt, T=T, T_student=1.0).item() == pytest.approx((soft_ce - entropy).item(), rel=1e-12)


# --- provenance --------------------------------------------------------------------------------------

GRAPH_FILES = sorted(p for p in GRAPHS.rglob("*.yaml") if "presets" not in p.relative_to(GRAPHS).parts)


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda p: p.relative_to(GRAPHS).as_posix())
def test_every_graph_has_published_provenance_and_a_digits_line(path: Path) -> None:
    from kdgraph.spec import load_spec

    doc = yaml.safe_load(path.read_text())
    assert doc.get("published"), f"{path.name}: no published: section"
    entries = doc["published"] if isinstance(doc["published"], list) else [doc["published"]]
    assert all(e.get("source") and "top1" in e for e in entries)
    load_spec(path)  # the schema checks the section's form
    rel = path.relative_to(GRAPHS).as_posix()
    assert f"# On the embedded digits data: kdgraph run graphs/{rel} --preset digits\n" in path.read_text()


def test_graphs_readme_is_generated_from_the_graphs() -> None:
    from kdgraph.graphs_index import REGENERATE, graphs_readme

    assert (GRAPHS / "README.md").read_text() == graphs_readme(), f"graphs/README.md is stale: run {REGENERATE}"
    assert "docs/diagrams/" not in graphs_readme()  # no links to diagrams that do not exist


MACHINE_PATH = re.compile(r"(?<![\w.])/(work|root|home|Users)/|shared/papers|[A-Za-z]:\\\\Users")


def test_no_file_names_a_path_of_the_machine_it_was_written_on() -> None:
    files = [
        GRAPHS.parent / "README.md",
        *sorted((GRAPHS.parent / "docs").rglob("*.md")),
        *sorted(GRAPHS.rglob("*.yaml")),
        GRAPHS / "README.md",
    ]
    found = [
        f"{f.relative_to(GRAPHS.parent)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not found, "\n".join(found)


def test_machine_path_pattern_catches_what_it_should() -> None:
    assert MACHINE_PATH.search("see /work/shared/papers/001.txt") and MACHINE_PATH.search("/home/me/ckpt.pth")
    assert not MACHINE_PATH.search("--out runs/smoke and /path/ckpt_epoch_240.pth")


# --- the smaller recipe facts -----------------------------------------------------------------------


def test_eskd_default_teacher_is_early_stopped_on_its_own_schedule() -> None:
    from kdgraph.spec import load_spec

    eskd = load_spec(GRAPHS / "eskd.yaml")
    assert eskd.nodes["teacher"].init["from"] == "teachers/resnet32x4_es.yaml"
    teacher = load_spec(GRAPHS / "teachers" / "resnet32x4_es.yaml")
    cfg = teacher.stages[0].train
    assert cfg["epochs"] == 50 and cfg["lr_schedule"]["milestones"] == [15, 30, 45]  # 15/50 (the survey)
    assert cfg["optimizer"]["lr"] == 0.05 and teacher.nodes["teacher"].type == "resnet32x4"


def test_teskd_as_its_code() -> None:
    from kdgraph.spec import load_spec

    spec = load_spec(GRAPHS / "teskd.yaml")
    assert spec.doc["vars"]["T"] == 4  # main.py: --temperature default 4
    assert spec.data["mean"] == [0.4914, 0.4822, 0.4465] and spec.data["std"] == [0.2023, 0.1994, 0.2010]
    assert spec.nodes["mfm"].params["fusion"] == "mixed"


def test_ipwd_ctkd_kcd_recipes() -> None:
    from kdgraph.data import _batch_count
    from kdgraph.spec import load_spec

    ipwd = load_spec(GRAPHS / "ipwd.yaml")
    assert ipwd.nodes["ipw"].inputs[0] == "student.logits"  # the KD-trained student's classifier
    ctkd = load_spec(GRAPHS / "ctkd.yaml")
    assert (ctkd.nodes["teacher"].type, ctkd.nodes["student"].type) == ("resnet56", "resnet20")
    assert ctkd.doc["published"][0]["top1"] == 71.19
    kcd = load_spec(GRAPHS / "kcd.yaml")
    assert kcd.data["drop_last"] and _batch_count(50_000, kcd.data["batch_size"], True, None, 1) == 390
    teachers = load_spec(GRAPHS / "teachers" / "resnet56.yaml").doc["published"]
    assert [t["top1"] for t in teachers] == [72.34, 71.21]
