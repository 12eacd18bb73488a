"""Ops: each one's defining property, on small CPU tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdgraph.catalog import load_builtins
from kdgraph.losses.basic import kd
from kdgraph.ops.adapters import ChannelMask, Connector, Generator, Pool, Projector
from kdgraph.ops.call import Call
from kdgraph.ops.fusion import BranchHead, MixedFusion
from kdgraph.ops.gradient import Detach, GradientReversal, Identity, Temperature
from kdgraph.ops.logits import ClassTemperature, LinearHead, Mix, Simplifier, Soften
from kdgraph.ops.match import ChannelMatch
from kdgraph.registry import OPS, PortInfo
from kdgraph.schedule import Schedule


def maps(*specs: tuple[int, int]) -> list[PortInfo]:
    """PortInfo of maps given (channels, stride) pairs."""
    return [PortInfo("map", c, s) for c, s in specs]


def logits_info(n: int = 1, c: int = 10) -> list[PortInfo]:
    return [PortInfo("logits", c)] * n


# --- logits ---------------------------------------------------------------------------------------


def test_mix_weights_logits_and_prob() -> None:
    a, b = torch.randn(4, 10), torch.randn(4, 10)
    mix = Mix(weights=[0.3, 0.7], in_info=logits_info(2))
    assert torch.allclose(mix(a, b), 0.3 * a + 0.7 * b)
    prob = Mix(weights=[0.3, 0.7], space="prob", in_info=logits_info(2))
    assert torch.allclose(prob(a, b).softmax(1), 0.3 * a.softmax(1) + 0.7 * b.softmax(1), atol=1e-6)
    equal = Mix(in_info=logits_info(3))
    assert torch.allclose(equal(a, b, a), (2 * a + b) / 3, atol=1e-6)
    scheduled = Mix(weights=[{"value": 1.0, "warmup": 4}, 1.0], in_info=logits_info(2))
    scheduled.set_epoch(2)
    assert torch.allclose(scheduled(a, b), 0.5 * a + b)
    with pytest.raises(ValueError, match="2 inputs but 3 weights"):
        Mix(weights=[1, 2, 3], in_info=logits_info(2))


def test_soften() -> None:
    z = torch.randn(3, 10)
    assert torch.allclose(Soften(T=4.0)(z), F.log_softmax(z / 4, 1))
    assert torch.allclose(Soften(T=2.0, log=False)(z), F.softmax(z / 2, 1))


def test_simplifier_zero_output_returns_softened_logits() -> None:
    g = F.log_softmax(torch.randn(8, 10) / 4, 1)
    simp = Simplifier(width=16, zero_init_out=True, in_info=logits_info(1, 10)).train()
    assert torch.equal(simp(g), g)  # dropout of an exact zero is zero
    assert simp.port_info()["out"] == PortInfo("logits", 10)
    assert simp.qkv.in_features == 10 and simp.qkv.out_features == 48 and simp.out.out_features == 10


def test_simplifier_attends_across_the_batch() -> None:
    torch.manual_seed(0)
    simp = Simplifier(width=16, in_info=logits_info(1, 10)).eval()
    g = torch.randn(5, 10)
    g2 = g.clone()
    g2[4] += 3.0  # change one sample ...
    out, out2 = simp(g), simp(g2)
    assert not torch.allclose(out[0], out2[0])  # ... and the others' outputs move: attention is over samples
    assert Simplifier(width=8, residual=False, num_classes=7)(torch.randn(3, 7)).shape == (3, 7)


def test_class_temperature_and_linear_head() -> None:
    op = ClassTemperature(T_target=6.0, T_other=3.0, num_classes=5)
    t = op(torch.tensor([0, 4]))
    assert t.shape == (2, 5) and t[0, 0] == 6.0 and t[0, 1] == 3.0 and t[1, 4] == 6.0
    head = LinearHead(in_info=[PortInfo("vector", 12)], num_classes=5)
    assert head(torch.randn(3, 12)).shape == (3, 5) and head(torch.randn(3, 12, 2, 2)).shape == (3, 5)
    assert head.port_info()["out"] == PortInfo("logits", 5)


# --- gradient ops ---------------------------------------------------------------------------------


def test_grl_scales_gradient_and_keeps_value() -> None:
    x = torch.randn(6, requires_grad=True)
    for factor in (-1.0, 0.5, -0.25):
        x.grad = None
        y = GradientReversal(factor=factor)(x)
        assert torch.equal(y, x)
        (y * torch.arange(6.0)).sum().backward()
        assert torch.allclose(x.grad, factor * torch.arange(6.0))
    # scheduled factor: CTKD's lambda at epoch 5 is -0.5
    grl = GradientReversal(factor=Schedule.from_spec({"cosine": [0, -1], "epochs": 10}))
    grl.set_epoch(5)
    x.grad = None
    grl(x).sum().backward()
    assert torch.allclose(x.grad, torch.full((6,), -0.5))


def test_temperature_range_and_ctkd_chain() -> None:
    temp = Temperature()
    T = temp()
    assert T.dim() == 0 and T.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)))
    assert temp(torch.randn(2, 3)).item() == T.item()  # inputs are ignored
    for t in (-8.0, -3.0, 0.0, 3.0, 8.0):
        with torch.no_grad():
            temp.t.fill_(t)
        assert 1.0 < temp().item() < 21.0
    with torch.no_grad():
        temp.t.fill_(1e4)
    assert temp().item() == pytest.approx(21.0)  # the bounds are the limits
    # CTKD: the temperature ascends the KD loss, scaled by lambda, while the student descends it
    zs, zt = torch.randn(4, 10), torch.randn(4, 10)
    temp_plain, temp_rev = Temperature(), Temperature()
    kd(zs, zt, T=temp_plain()).backward()
    kd(zs, zt, T=GradientReversal(factor=-0.5)(temp_rev())).backward()
    assert torch.allclose(temp_rev.t.grad, -0.5 * temp_plain.t.grad)


def test_detach_and_identity() -> None:
    x = torch.randn(3, requires_grad=True)
    assert not Detach()(x).requires_grad and Identity()(x) is x
    assert Detach.stops_gradient  # the planner cuts gradient routes at this node


# --- TESKD ----------------------------------------------------------------------------------------


def resnet18_stages(n: int = 2) -> list[torch.Tensor]:
    return [torch.randn(n, c, s, s) for c, s in ((64, 32), (128, 16), (256, 8), (512, 4))]


def test_mfm_shapes_and_parameters() -> None:
    info = maps((64, 1), (128, 2), (256, 4), (512, 8))
    mfm = MixedFusion(channels=512, in_info=info)
    out = mfm(*resnet18_stages())
    assert mfm.outputs == ("t1", "t2", "t3", "t4") and set(out) == set(mfm.outputs)
    for name, size in zip(mfm.outputs, (32, 16, 8, 4)):
        assert out[name].shape == (2, 512, size, size)
    assert mfm.port_info()["t2"] == PortInfo("map", 512, 2)
    # Conv1x1 without bias + BN (2C) for 4 laterals, 3 ups, 3 fuses
    c = 512
    expected = sum(ci * c + 2 * c for ci in (64, 128, 256, 512)) + 3 * (c * c + 2 * c) + 3 * (2 * c * c + 2 * c)
    assert sum(p.numel() for p in mfm.parameters()) == expected


def test_mfm_fusion_rule() -> None:
    mfm = MixedFusion(channels=8, in_info=maps((4, 1), (6, 2))).eval()
    s1, s2 = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)
    out = mfm(s1, s2)
    t2 = mfm.laterals[1](s2)
    up = mfm.ups[0].conv(F.interpolate(t2, scale_factor=2, mode="bilinear", align_corners=True))
    t1 = mfm.fuses[0](torch.cat([up + mfm.laterals[0](s1), up], 1))
    assert torch.allclose(out["t2"], t2) and torch.allclose(out["t1"], t1, atol=1e-6)


def test_branch_head() -> None:
    head = BranchHead(kernel=8, in_info=maps((512, 1)), num_classes=100)
    out = head(torch.randn(2, 512, 32, 32))
    assert out["logits"].shape == (2, 100) and out["feat"].shape == (2, 512)
    assert head.body[0][0].kernel_size == (8, 8) and head.body[0][0].stride == (8, 8)
    assert head.body[0][0].bias is not None and head.body[1][0].bias is not None
    assert head.port_info() == {"logits": PortInfo("logits", 100), "feat": PortInfo("vector", 512)}


# --- adapters -------------------------------------------------------------------------------------


def test_connector_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    assert Connector(channels=32, in_info=maps((16, 4)))(x).shape == (2, 32, 8, 8)
    ref = torch.randn(2, 64, 4, 4)
    con = Connector(in_info=maps((16, 4), (64, 8)))
    assert con(x, ref).shape == (2, 64, 4, 4) and con.port_info()["out"] == PortInfo("map", 64, 8)
    vec = Connector(channels=5, in_info=[PortInfo("vector", 12)])
    assert vec(torch.randn(3, 12)).shape == (3, 5)
    with pytest.raises(ValueError, match="give `channels`"):
        Connector(in_info=maps((16, 4)))


def test_projector() -> None:
    proj = Projector(in_info=maps((64, 8), (256, 8)))
    convs = [m for m in proj.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (64, 128, 1), (128, 128, 3), (128, 256, 1)
    ]
    assert all(c.bias is None for c in convs)
    s, t = torch.randn(2, 64, 8, 8), torch.randn(2, 256, 4, 4)
    assert proj(s).shape == (2, 256, 8, 8) and proj(s, t).shape == (2, 256, 4, 4)


def test_pool() -> None:
    x = torch.randn(2, 6, 8, 8)
    assert torch.allclose(Pool()(x), x.mean((2, 3)))
    assert Pool(size=2)(x).shape == (2, 6, 2, 2)
    assert Pool(in_info=maps((6, 4), (3, 8)))(x, torch.randn(2, 3, 4, 4)).shape == (2, 6, 4, 4)
    assert Pool(in_info=maps((6, 4))).port_info()["out"] == PortInfo("vector", 6)


def test_channel_mask() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 100, 3, 3)
    y = ChannelMask(ratio=0.15).train()(x)
    per_channel = y.flatten(2)
    assert torch.equal(per_channel.min(2).values, per_channel.max(2).values)  # one decision per (sample, channel)
    assert abs((y[:, :, 0, 0] == 0).float().mean().item() - 0.15) < 0.02
    assert torch.equal(ChannelMask().eval()(x), x)


def test_generator() -> None:
    gen = Generator(in_info=maps((16, 4), (32, 4)))
    assert isinstance(gen.align, nn.Conv2d) and gen.align.bias is not None
    assert all(m.bias is not None for m in gen.generation if isinstance(m, nn.Conv2d))
    assert gen(torch.randn(2, 16, 4, 4)).shape == (2, 32, 4, 4)
    same = Generator(channels=16, in_info=maps((16, 4)))
    assert isinstance(same.align, nn.Identity)


# --- call -----------------------------------------------------------------------------------------


def test_call_shares_weights_and_adds_no_parameters() -> None:
    teacher = nn.Sequential()
    teacher.add_module("body", nn.Linear(8, 6))
    teacher.add_module("fc", nn.Linear(6, 4))
    op = Call(node="teacher", module="fc", nodes={"teacher": teacher}, num_classes=4)
    assert list(op.parameters()) == [] and op.state_dict() == {} and list(op.children()) == []
    x = torch.randn(3, 6, requires_grad=True)
    assert torch.equal(op(x), teacher.fc(x))
    with torch.no_grad():
        teacher.fc.weight.add_(1.0)  # the op sees the teacher's current weights
    assert torch.equal(op(x), teacher.fc(x))
    op(x).sum().backward()
    assert x.grad is not None  # gradient flows through the shared module to the input
    assert op.port_info()["out"] == PortInfo("logits", 4)
    with pytest.raises(ValueError, match="no submodule 'fcc'"):
        Call(node="teacher", module="fcc", nodes={"teacher": teacher})
    with pytest.raises(ValueError, match="unknown node 'teacherr'"):
        Call(node="teacherr", module="fc", nodes={"teacher": teacher})

    class View:  # the engine's read-only view of built nodes: no iteration, only lookups and keys()
        def __getitem__(self, name: str) -> nn.Module:
            return {"teacher": teacher}[name]

        def __contains__(self, name: object) -> bool:
            return name == "teacher"

        def keys(self) -> list[str]:
            return ["teacher"]

    assert torch.equal(Call(node="teacher", module="fc", nodes=View())(x), teacher.fc(x))
    with pytest.raises(ValueError, match="did you mean 'teacher'"):
        Call(node="teachr", module="fc", nodes=View())


# --- KCD channel matching -------------------------------------------------------------------------


def _fit(op: ChannelMatch, teacher: torch.Tensor, student: torch.Tensor, batch: int = 64) -> None:
    op.fit_begin()
    for i in range(0, teacher.shape[0], batch):
        op.fit_step(teacher[i : i + batch], student[i : i + batch])
    op.fit_end()


@pytest.mark.parametrize("metric", ["correlation", "cosine", "l1", "l2"])
@pytest.mark.parametrize("method", ["bipartite", "greedy"])
def test_channel_match_recovers_permutation(metric: str, method: str) -> None:
    g = torch.Generator().manual_seed(3)
    n, c_t, c_s = 512, 12, 8
    scale = torch.rand(c_t, generator=g) * 2 + 0.5
    teacher = torch.randn(n, c_t, 2, 2, generator=g) * scale[None, :, None, None] + 1.0
    perm = torch.randperm(c_t, generator=g)[:c_s]  # student channel j copies teacher channel perm[j]
    student = teacher[:, perm] + 0.05 * torch.randn(n, c_s, 2, 2, generator=g)
    op = ChannelMatch(metric=metric, method=method, in_info=maps((c_t, 4), (c_s, 4)))
    with pytest.raises(RuntimeError, match="not been fitted"):
        op(teacher, student)
    _fit(op, teacher, student)
    assert torch.equal(op.perm, perm)
    assert torch.equal(op(teacher, student), teacher[:, perm])
    assert op.port_info()["out"].channels == c_s


def test_channel_match_state_dict_round_trip() -> None:
    teacher = torch.randn(256, 6)
    perm = torch.tensor([4, 0, 5, 1, 3, 2])
    op = ChannelMatch(in_info=[PortInfo("vector", 6)] * 2)
    _fit(op, teacher, teacher[:, perm] * 2.0 - 1.0)
    state = op.state_dict()
    assert torch.equal(state["perm"], perm) and bool(state["fitted"])
    fresh = ChannelMatch(in_info=[PortInfo("vector", 6)] * 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(teacher), teacher[:, perm])


def test_channel_match_argument_checks() -> None:
    with pytest.raises(ValueError, match="use method: greedy"):
        ChannelMatch(in_info=maps((4, 1), (8, 1)))
    with pytest.raises(ValueError, match="metric must be one of"):
        ChannelMatch(metric="pearson", in_info=maps((4, 1), (4, 1)))
    op = ChannelMatch(in_info=maps((4, 1), (4, 1)))
    op.fit_begin()
    with pytest.raises(RuntimeError, match="never called"):
        op.fit_end()


# --- registry -------------------------------------------------------------------------------------


def test_registry_docs() -> None:
    load_builtins()
    expected = {
        "mix", "soften", "simplifier", "mfm", "branch_head", "connector", "projector", "pool", "call",
        "channel_match", "grl", "temperature", "channel_mask", "generator", "detach", "identity",
        "linear_head", "class_temperature",
    }
    assert expected <= set(OPS.names())
    for e in OPS.entries():
        assert e.description and len(e.description) < 120, e.name
