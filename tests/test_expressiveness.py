"""What the papers need beyond the defaults, each against a value computed independently: KCD's KL
consistency (Table 2), TESKD's MFM ablation modes (Table 4), CTKD's instance-wise temperature, and the
init action that re-initialises a node with a seed (KCD Table 3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdgraph.losses.basic import kd
from kdgraph.ops.fusion import MixedFusion
from kdgraph.ops.instance_temperature import InstanceTemperature
from kdgraph.ops.match import ChannelMatch
from kdgraph.registry import PortInfo


def maps(*specs: tuple[int, int]) -> list[PortInfo]:
    return [PortInfo("map", c, s) for c, s in specs]


# --- KCD: KL-divergence consistency ----------------------------------------------------------------


def test_kl_consistency_matches_the_divergence_computed_by_loops() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.rand(12, 3, generator=g, dtype=torch.float64)  # pooled (N, c_t), non-negative (after ReLU)
    s = torch.rand(12, 3, generator=g, dtype=torch.float64) + 0.05
    op = ChannelMatch(metric="kl", method="bipartite", eps=1e-12, in_info=[PortInfo("vector", 3)] * 2)
    op.fit_begin()
    op.fit_step(t[:5], s[:5])  # two batches: the moments add up
    op.fit_step(t[5:], s[5:])
    op.fit_end()
    expected = torch.empty(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            p, q = t[:, i] / t[:, i].sum(), s[:, j] / s[:, j].sum()
            expected[i, j] = 1 / sum(p[n] * math.log(p[n] / q[n]) for n in range(12))
    assert torch.allclose(op.consistency.double(), expected, rtol=1e-5)
    # the assignment maximises the trace of M over permutations (3! of them, checked by hand)
    import itertools

    best = max(itertools.permutations(range(3)), key=lambda pm: sum(expected[pm[j], j] for j in range(3)))
    assert op.perm.tolist() == list(best)


def test_kl_consistency_of_identical_channels_is_largest() -> None:
    x = torch.rand(20, 4, dtype=torch.float64) + 0.1
    op = ChannelMatch(metric="kl", in_info=[PortInfo("vector", 4)] * 2)
    op.fit_begin()
    op.fit_step(x[:, [2, 0, 3, 1]], x)  # teacher channels are the student's, shuffled
    op.fit_end()
    assert op.perm.tolist() == [1, 3, 0, 2]  # student j <- teacher channel holding the same values


# --- TESKD: MFM ablation modes (Table 4) ---------------------------------------------------------------

# CIFAR ResNet-18 stages (channels, stride) and C = 8 to keep it small
STAGES = maps((4, 1), (6, 2), (8, 4))


def stage_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, 16 // s, 16 // s, generator=g) for c, s in ((4, 1), (6, 2), (8, 4))]


def conv_bn_params(c_in: int, c_out: int) -> int:
    return c_in * c_out + 2 * c_out  # Conv1x1 without bias + BN


@pytest.mark.parametrize(
    "fusion, params",
    [
        # laterals (4, 6, 8 -> 8), ups (2 x 8 -> 8), fuses (2 x 16 -> 8)
        (
            "mixed",
            conv_bn_params(4, 8)
            + conv_bn_params(6, 8)
            + conv_bn_params(8, 8)
            + 2 * conv_bn_params(8, 8)
            + 2 * conv_bn_params(16, 8),
        ),
        ("add", conv_bn_params(4, 8) + conv_bn_params(6, 8) + conv_bn_params(8, 8) + 2 * conv_bn_params(8, 8)),
        # only the top lateral; fuses over the raw stage feature + C: (4 + 8) and (6 + 8) -> 8
        ("concat", conv_bn_params(8, 8) + 2 * conv_bn_params(8, 8) + conv_bn_params(12, 8) + conv_bn_params(14, 8)),
        ("none", conv_bn_params(8, 8) + 2 * conv_bn_params(8, 8)),
    ],
)
def test_mfm_modes_follow_their_formulas(fusion: str, params: int) -> None:
    torch.manual_seed(0)
    mfm = MixedFusion(channels=8, fusion=fusion, in_info=STAGES).eval()
    assert sum(p.numel() for p in mfm.parameters()) == params
    s1, s2, s3 = stage_inputs()
    out = mfm(s1, s2, s3)
    lat, up, fuse = mfm.laterals, mfm.ups, mfm.fuses
    t3 = lat[2](s3)

    def level(i: int, coarser: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        u = up[i](coarser, s.shape[-2:])
        return {
            "mixed": lambda: fuse[i](torch.cat([u + lat[i](s), u], 1)),
            "add": lambda: u + lat[i](s),
            "concat": lambda: fuse[i](torch.cat([s, u], 1)),
            "none": lambda: u,
        }[fusion]()

    t2 = level(1, t3, s2)
    t1 = level(0, t2, s1)
    for name, want in (("t3", t3), ("t2", t2), ("t1", t1)):
        assert torch.equal(out[name], want), name
    assert out["t1"].shape == (2, 8, 16, 16)


def test_mfm_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="fusion must be one of mixed, add, concat, none"):
        MixedFusion(channels=8, fusion="sum", in_info=STAGES)


# --- CTKD: instance-wise temperature ------------------------------------------------------------------


def test_instance_temperature_and_its_kd_loss_by_hand() -> None:
    torch.manual_seed(0)
    op = InstanceTemperature(hidden=5, in_info=[PortInfo("logits", 10)] * 2).double()
    zs = 3 * torch.sin(torch.arange(40.0, dtype=torch.float64)).reshape(4, 10)
    zt = 5 * torch.cos(0.7 * torch.arange(40.0, dtype=torch.float64) + 0.3).reshape(4, 10)
    T = op(zt, zs)
    w1, b1 = op.mlp[0].weight, op.mlp[0].bias
    w2, b2 = op.mlp[2].weight, op.mlp[2].bias
    by_hand = torch.stack(
        [1 + 20 * torch.sigmoid(w2 @ torch.relu(w1 @ torch.cat([zt[n], zs[n]]) + b1) + b2) for n in range(4)]
    )
    assert T.shape == (4, 1) and torch.allclose(T, by_hand, rtol=1e-12)
    assert ((T > 1) & (T < 21)).all()
    # kd with a per-sample temperature: mean_n T_n^2 KL(softmax(zt_n / T_n) || softmax(zs_n / T_n))
    per = [
        T[n, 0] ** 2
        * F.kl_div(
            F.log_softmax(zs[n] / T[n, 0], 0), F.log_softmax(zt[n] / T[n, 0], 0), reduction="sum", log_target=True
        )
        for n in range(4)
    ]
    loss = kd(zs, zt, T=T)
    assert loss.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-12)
    loss.backward()
    assert w1.grad is not None and w1.grad.abs().sum() > 0  # the temperature learns from the loss


def test_instance_temperature_graph_validates(tmp_path: Path) -> None:
    from kdgraph.check import check_graph

    from .conftest import GRAPHS

    spec, _ = check_graph(
        GRAPHS / "ctkd.yaml",
        ["vars.temp_op=instance_temperature", "++data.dataset=synthetic", "++data.classes=10", "~nodes.teacher.init"],
    )
    assert spec.nodes["temp"].type == "instance_temperature"


# --- init: {seed: N} (KCD Table 3) --------------------------------------------------------------------

RESEED = """\
kdgraph: 1
name: reseed
data: {dataset: synthetic, size: 32, test_size: 8, image_size: 8, classes: 4, batch_size: 16}
nodes:
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train: {epochs: 1, progress: false}
stages:
  - {name: first, epochs: 1}
  - {name: again, epochs: 0, init: {student: {seed: 7}}}
deploy: student.logits
"""


@pytest.mark.slow
def test_seed_init_gives_the_net_built_under_that_seed(tmp_path: Path) -> None:
    from kdgraph.check import check_graph
    from kdgraph.registry import NETS
    from kdgraph.train import Trainer

    (tmp_path / "g.yaml").write_text(RESEED)
    spec, _ = check_graph(tmp_path / "g.yaml", dry=False)
    Trainer(spec, tmp_path / "run", log=lambda *_: None).run()
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["graph"]
    torch.manual_seed(7)
    fresh = NETS.get("cnn").obj(width=4, num_classes=4, in_channels=3).state_dict()
    got = {k[len("nodes.student.") :]: v for k, v in final.items() if k.startswith("nodes.student.")}
    assert got.keys() == fresh.keys() and all(torch.equal(got[k], fresh[k]) for k in got)
