"""load_checkpoint: RepDistiller-layout files load unchanged; every failure is one CheckpointError."""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kdgraph.catalog import load_builtins
from kdgraph.errors import CheckpointError
from kdgraph.nets.checkpoint import load_checkpoint
from kdgraph.registry import NETS

load_builtins()


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS.get(name).obj()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A resnet8 whose weights and BN statistics differ from a fresh one."""
    net = build("resnet8")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
        net(torch.randn(2, 3, 32, 32))  # moves running stats and num_batches_tracked
    return net


def test_repdistiller_layout_loads(tmp_path, trained) -> None:
    # what RepDistiller's train_teacher.py writes: {'epoch', 'model', 'accuracy', 'optimizer'}
    opt = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9)
    state = {"epoch": 240, "model": trained.state_dict(), "accuracy": torch.tensor(71.3), "optimizer": opt.state_dict()}
    torch.save(state, tmp_path / "ckpt_epoch_240.pth")
    fresh = build("resnet8")
    assert not same_weights(fresh, trained)
    load_checkpoint(fresh, tmp_path / "ckpt_epoch_240.pth")
    assert same_weights(fresh, trained)


def test_ddp_prefix_is_stripped(tmp_path, trained) -> None:
    wrapped = nn.DataParallel(trained)  # keys come out as module.conv1.weight, ...
    assert next(iter(wrapped.state_dict())).startswith("module.")
    torch.save({"model": wrapped.state_dict()}, tmp_path / "ddp.pth")
    fresh = build("resnet8")
    load_checkpoint(fresh, str(tmp_path / "ddp.pth"))
    assert same_weights(fresh, trained)


def test_dotted_key_and_whole_file(tmp_path, trained) -> None:
    torch.save({"state_dict": {"student": trained.state_dict()}}, tmp_path / "nested.pt")
    torch.save(trained.state_dict(), tmp_path / "bare.pt")
    a, b = build("resnet8"), build("resnet8")
    load_checkpoint(a, tmp_path / "nested.pt", key="state_dict.student")
    load_checkpoint(b, tmp_path / "bare.pt", key=None)
    assert same_weights(a, trained) and same_weights(b, trained)


class _Payload:
    """Unpickling this touches a marker file: what a crafted checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_not_weights_only_file_is_refused_with_the_conversion(tmp_path, trained) -> None:
    torch.save({"model": trained.state_dict(), "opt": argparse.Namespace(lr=0.05)}, tmp_path / "old.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("resnet8"), tmp_path / "old.pth")
    msg = str(err.value)
    assert "refused: it holds a Python object (argparse.Namespace)" in msg and "\n" not in msg
    assert f"python -m kdgraph.safe_load {tmp_path / 'old.pth'} {tmp_path / 'old.weights.pt'}" in msg
    # the user vouches for the file and converts it once: the weights survive, the Namespace does not
    from kdgraph.safe_load import main as convert_main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert convert_main([str(tmp_path / "old.pth"), str(tmp_path / "old.weights.pt")]) == 0
    assert "dropped opt (argparse.Namespace)" in out.getvalue()
    fresh = build("resnet8")
    load_checkpoint(fresh, tmp_path / "old.weights.pt")
    assert same_weights(fresh, trained)


def test_pickle_payload_in_a_checkpoint_never_runs(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused: it holds a Python object"):
        load_checkpoint(build("resnet8"), tmp_path / "evil.pth")
    assert not marker.exists()


def test_wrong_architecture_lists_keys(tmp_path) -> None:
    torch.save({"model": build("vgg8").state_dict()}, tmp_path / "vgg8.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("resnet8"), tmp_path / "vgg8.pth")
    msg = str(err.value)
    assert str(tmp_path / "vgg8.pth") in msg and "does not fit CifarResNet" in msg
    assert "missing: conv1.weight" in msg and "unexpected: block0.0.weight" in msg
    assert "(+" in msg  # more than five of each: the rest are counted, not listed
    assert "Traceback" not in msg and "Error(s) in loading" not in msg


def test_shape_mismatch_lists_shapes_even_when_not_strict(tmp_path) -> None:
    torch.save({"model": build("resnet8").state_dict()}, tmp_path / "r8.pth")
    target = NETS.get("resnet8").obj(num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, tmp_path / "r8.pth", strict=False)
    msg = str(err.value)
    assert "2 shape-mismatched" in msg and "fc.weight (100, 64) in file vs (10, 64) in model" in msg
    assert "missing" not in msg


def test_non_strict_tolerates_missing_and_extra(tmp_path, trained) -> None:
    state = dict(trained.state_dict())
    state.pop("fc.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "partial.pth")
    fresh = build("resnet8")
    load_checkpoint(fresh, tmp_path / "partial.pth", strict=False)
    assert torch.equal(fresh.conv1.weight, trained.conv1.weight)
    with pytest.raises(CheckpointError, match=r"1 missing: fc\.weight"):
        load_checkpoint(fresh, tmp_path / "partial.pth")


def test_missing_key_lists_top_level_keys(tmp_path, trained) -> None:
    torch.save({"net": trained.state_dict(), "epoch": 3}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("resnet8"), tmp_path / "c.pth", key="model")
    msg = str(err.value)
    assert "no key 'model'" in msg and "'net'" in msg and "'epoch'" in msg and "\n" not in msg
    torch.save(trained.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="bare state_dict: use key: null"):
        load_checkpoint(build("resnet8"), tmp_path / "bare.pth")


def test_missing_and_corrupt_files_are_one_line(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build("resnet8"), missing)
    assert str(err.value) == f"checkpoint {missing}: no such file"
    torch.save({"model": build("resnet8").state_dict()}, tmp_path / "good.pth")
    good = (tmp_path / "good.pth").read_bytes()
    files = {"garbage.pth": b"\x80\x04 not a checkpoint", "text.pth": b"hello", "truncated.pth": good[: len(good) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fallback to full unpickling for garbage
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with pytest.raises(CheckpointError) as err:
                load_checkpoint(build("resnet8"), tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"checkpoint {tmp_path / name}: unreadable") and "\n" not in msg, msg


def test_teacher_layouts_roundtrip_through_the_zoo(tmp_path) -> None:
    # a teacher saved from one zoo instance loads into another, prefix or not (vgg13: classifier key)
    src = build("vgg13")
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "vgg13.pth")
    dst = NETS.get("vgg13").obj()
    load_checkpoint(dst, tmp_path / "vgg13.pth")
    assert same_weights(dst, src)
