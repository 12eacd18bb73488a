"""OFD, AB, ReviewKD and FT: each loss against its paper's formula in float64, each module's size against the reference.

Formulas are evaluated element by element in plain Python (independent of the vectorised code):
OFD's partial L2 (Heo et al., ICCV 2019, Eq. 6, with the margin of section 3.3), AB's alternative L2
(Heo et al., AAAI 2019, Eq. 4), ReviewKD's HCL (Chen et al., CVPR 2021, section 3.3, mdistiller's levels
4, 2, 1 with halving weights) and RepDistiller's factor-transfer distance. Parameter counts are those of
the reference modules for resnet32x4 -> resnet8x4, worked out from their layer shapes in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from kdgraph.losses.factor import ft
from kdgraph.losses.ofd import ab, ofd
from kdgraph.losses.review import hcl
from kdgraph.ops.factor import Paraphraser, Translator
from kdgraph.ops.ofd import BNMargin, OFDConnector, ofd_margin
from kdgraph.ops.review import Review
from kdgraph.registry import PortInfo


def maps(seed: int, shape: tuple[int, ...] = (2, 3, 4, 4)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- OFD


def test_ofd_partial_l2_is_the_papers_distance() -> None:
    s, t = maps(0), maps(1)
    margin = [-0.3, -0.8, -0.05]
    expected = 0.0
    for n, c, h, w in torch.cartesian_prod(*[torch.arange(d) for d in s.shape]).tolist():
        si, ti = s[n, c, h, w].item(), t[n, c, h, w].item()
        tm = max(ti, margin[c])  # the teacher value clamped at the margin
        expected += 0.0 if (si <= tm and tm <= 0) else (tm - si) ** 2
    expected /= s.shape[0]  # summed over C, H, W, averaged over the batch
    got = ofd(s, t, margin=torch.tensor(margin, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, abs=1e-10, rel=0)


def test_ofd_margin_is_the_expected_negative_response() -> None:
    gamma = torch.tensor([1.0, 0.5, -2.0, 1.0], dtype=torch.float64)
    beta = torch.tensor([0.0, -0.3, 1.5, 4.0], dtype=torch.float64)  # the last: P(x < 0) = 3e-5 < 0.001
    got = ofd_margin(gamma, beta)
    for c in range(4):
        s, m = abs(gamma[c].item()), beta[c].item()
        p = norm.cdf(-m / s)
        expected = m - s * norm.pdf(m / s) / p if p > 0.001 else -3 * s  # E[x | x < 0], x ~ N(m, s^2)
        assert got[c].item() == pytest.approx(expected, abs=1e-10, rel=0)
    assert got[0].item() == pytest.approx(-math.sqrt(2 / math.pi), abs=1e-12)  # half-normal mean


def test_bn_margin_reads_the_teachers_last_stage_bn_at_run_time() -> None:
    from kdgraph.nets.cifar_resnet import resnet32x4

    teacher = resnet32x4()
    op = BNMargin("teacher", "layer1", nodes={"teacher": teacher}, in_info=[PortInfo("map", 64)])
    bn = teacher.layer1[4].bn2  # the BN before the stage's final ReLU (mdistiller's get_bn_before_relu)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    out = op(torch.zeros(1, 64, 2, 2))
    assert out.shape == (1, 64, 1, 1)
    assert torch.allclose(out.flatten(), ofd_margin(bn.weight, bn.bias).float())
    assert count(op) == 0 and not op.state_dict()  # shares the teacher's BN, owns nothing


def test_ofd_connectors_have_mdistillers_size() -> None:
    # ConnectorConvBN for stages 1..3 of resnet8x4 -> resnet32x4 (64->64, 128->128, 256->256):
    # Conv1x1 without bias c_s*c_t + BN 2*c_t each: 4,224 + 16,640 + 66,048
    total = sum(count(OFDConnector(in_info=[PortInfo("map", c), PortInfo("map", c)])) for c in (64, 128, 256))
    assert total == 86_912


# ---------------------------------------------------------------- AB


def test_ab_alternative_l2_is_the_papers_loss() -> None:
    s, t = maps(2) * 2, maps(3)
    mu = 1.0
    expected = 0.0
    for si, ti in zip(s.flatten().tolist(), t.flatten().tolist()):
        # rho(T) * relu(mu - S)^2 + (1 - rho(T)) * relu(mu + S)^2, rho(T) = [T > 0]
        expected += max(mu - si, 0.0) ** 2 if ti > 0 else max(mu + si, 0.0) ** 2
    expected /= s.shape[0]
    assert ab(s, t, margin=mu).item() == pytest.approx(expected, abs=1e-10, rel=0)


# ---------------------------------------------------------------- ReviewKD


def block_mean(x: torch.Tensor, level: int) -> torch.Tensor:
    """Average pooling to level x level by hand (the map's size divisible by level)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, level, h // level, level, w // level).mean(dim=(3, 5))


@pytest.mark.parametrize(("size", "pools"), [(8, (4, 2, 1)), (4, (2, 1)), (1, ())])
def test_hcl_is_the_pyramid_of_halving_weights(size: int, pools: tuple[int, ...]) -> None:
    s, t = maps(4, (2, 3, size, size)), maps(5, (2, 3, size, size))
    terms = [((s - t) ** 2).mean().item()] + [((block_mean(s, p) - block_mean(t, p)) ** 2).mean().item() for p in pools]
    weights = [1.0, 0.5, 0.25, 0.125][: len(terms)]
    expected = sum(w * x for w, x in zip(weights, terms)) / sum(weights)
    assert hcl(s, t).item() == pytest.approx(expected, abs=1e-10, rel=0)
    if size == 1:  # a pooled vector against its (N, C, 1, 1) output
        assert hcl(s, t.flatten(1)).item() == pytest.approx(expected, abs=1e-10, rel=0)


def test_review_abfs_have_mdistillers_size_and_shapes() -> None:
    # mdistiller's ABFs for res8x4 -> res32x4: in [64, 128, 256, 256], out [64, 128, 256, 256], mid 256.
    # ABF(c, 256, o): Conv1x1 c*256 + BN 512 + Conv3x3 256*o*9 + BN 2*o [+ att Conv1x1 512*2 + 2 if fused]
    #   64: 16,384 + 512 + 147,456 + 128 + 1,026 = 165,506;  128: 329,474;  256: 657,410;  256 (no fusion): 656,384
    ins = [PortInfo("map", 64, 1), PortInfo("map", 128, 2), PortInfo("map", 256, 4), PortInfo("vector", 256)]
    op = Review(channels=[64, 128, 256, 256], in_info=ins)
    assert count(op) == 1_808_774
    assert [count(a) for a in op.abfs] == [165_506, 329_474, 657_410, 656_384]
    feats = [torch.randn(2, 64, 32, 32), torch.randn(2, 128, 16, 16), torch.randn(2, 256, 8, 8), torch.randn(2, 256)]
    out = op(*feats)
    assert [tuple(out[f"out{i}"].shape) for i in range(4)] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8),
                                                              (2, 256, 1, 1)]


def test_review_fuses_the_deeper_level_by_attention() -> None:
    torch.manual_seed(0)
    op = Review(in_info=[PortInfo("map", 2), PortInfo("map", 2)]).double().eval()
    shallow, deep = maps(6, (1, 2, 4, 4)), maps(7, (1, 2, 2, 2))
    out = op(shallow, deep)
    a0, a1 = op.abfs
    _, residual = a1(deep)  # the deepest level: no fusion, its projected map is the residual
    x = a0.conv1(shallow)
    y = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
    z = torch.sigmoid(a0.att_conv[0](torch.cat([x, y], 1)))
    assert torch.allclose(out["out0"], a0.conv2(x * z[:, :1] + y * z[:, 1:]))
    assert torch.allclose(out["out1"], a1.conv2(a1.conv1(deep)))


# ---------------------------------------------------------------- FT


def test_ft_is_the_l1_distance_of_normalised_factors() -> None:
    s, t = maps(8, (2, 3, 4, 4)), maps(9, (2, 5, 4, 4))
    expected = 0.0
    for n in range(2):
        a = [sum(s[n, c, h, w].item() ** 2 for c in range(3)) / 3 for h in range(4) for w in range(4)]
        b = [sum(t[n, c, h, w].item() ** 2 for c in range(5)) / 5 for h in range(4) for w in range(4)]
        na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
        expected += sum(abs(x / na - y / nb) for x, y in zip(a, b))
    expected /= 2 * 16  # mean over N x H x W
    assert ft(s, t).item() == pytest.approx(expected, abs=1e-10, rel=0)


def test_paraphraser_and_translator_have_repdistillers_size() -> None:
    # Paraphraser(t_shape C=256, k=0.5, no BN): Conv3x3 256->256, 256->128, 128->128 with biases
    # (590,080 + 295,040 + 147,584) + ConvT3x3 128->128, 128->256, 256->256 (147,584 + 295,168 + 590,080)
    para = Paraphraser(in_info=[PortInfo("map", 256)])
    assert count(para) == 2_065_536
    # Translator(s C=256, t C=256, k=0.5, BN): the encoder's convs 1,032,704 + BN 512 + 256 + 256
    trans = Translator(in_info=[PortInfo("map", 256), PortInfo("map", 256)])
    assert count(trans) == 1_033_728
    x = torch.randn(2, 256, 8, 8)
    out = para(x)
    assert out["factor"].shape == (2, 128, 8, 8) and out["rec"].shape == x.shape
    assert trans(x).shape == (2, 128, 8, 8)
