"""A stage's frozen weights are written once beside the checkpoints, not with each of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.errors import CheckpointError
from kdgraph.train.fixed_weights import FixedWeights, merged

from .conftest import KD_CNN, same


def test_the_frozen_part_is_new_only_when_a_tensor_changed(tmp_path: Path) -> None:
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    state = lambda: {  # noqa: E731
        **{f"nodes.teacher.{k}": v for k, v in teacher.state_dict().items()},
        **{f"nodes.student.{k}": v for k, v in student.state_dict().items()},
    }
    fixed = FixedWeights()
    once, rest, new = fixed.split(state(), ["teacher"])
    assert sorted(once) == ["nodes.teacher.bias", "nodes.teacher.weight"] and new
    assert sorted(rest) == ["nodes.student.bias", "nodes.student.weight"]
    first = fixed.write(tmp_path, once, new)
    fixed.saved(tmp_path, first)  # a checkpoint naming it is in place
    with torch.no_grad():
        student.weight += 1  # the trained part changes: the frozen file stays
    once, _, new = fixed.split(state(), ["teacher"])
    assert not new and fixed.write(tmp_path, once, new) == first
    fixed.saved(tmp_path, first)
    with torch.no_grad():
        teacher.bias += 1  # an in-place write moves the version counter: written again, under another name
    once, _, new = fixed.split(state(), ["teacher"])
    second = fixed.write(tmp_path, once, new)
    assert new and second["file"] != first["file"]
    fixed.saved(tmp_path, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first["file"], second["file"]])  # both kept
    fixed.saved(tmp_path, second)  # the two kept checkpoints both name the second: the first goes
    assert [p.name for p in tmp_path.iterdir()] == [second["file"]]
    loaded = merged(tmp_path, {"graph": rest, "fixed": second})
    assert torch.equal(loaded["nodes.teacher.bias"], teacher.bias.detach()) and loaded.keys() == state().keys()




def test_a_kd_run_resumes_with_its_teacher_from_the_fixed_file(tmp_path: Path, one_thread) -> None:
    from kdgraph.spec import load_spec
    from kdgraph.train import Trainer
    from kdgraph.train.loop import Interrupted

    path = tmp_path / "g.yaml"
    path.write_text(KD_CNN)
    spec = load_spec(path, [])
    Trainer(spec, tmp_path / "straight", log=lambda *_: None).run()
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "resumed", log=lambda *_: None, stop_after=4).run()
    folder = tmp_path / "resumed" / "checkpoints"
    fixed = list(folder.glob("fixed-*.pt"))
    assert len(fixed) == 1  # three saves (start, epoch 1, the pause in epoch 2): one teacher file
    teacher = torch.load(fixed[0], weights_only=True)
    assert teacher and all(k.startswith("nodes.teacher.") for k in teacher)
    for step_file in folder.glob("step-*.pt"):
        assert not any(k.startswith("nodes.teacher.") for k in torch.load(step_file, weights_only=True)["graph"])
    Trainer(spec, tmp_path / "resumed", log=lambda *_: None, resume=True).run()
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)["graph"]
    b = torch.load(tmp_path / "resumed" / "final.pt", weights_only=True)["graph"]
    assert same(a, b) and any(k.startswith("nodes.teacher.") for k in b)


def test_a_damaged_fixed_file_is_one_clear_error(tmp_path: Path) -> None:
    from kdgraph.spec import load_spec
    from kdgraph.train import Trainer
    from kdgraph.train.loop import Interrupted

    path = tmp_path / "g.yaml"
    path.write_text(KD_CNN)
    spec = load_spec(path, [])
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "run", log=lambda *_: None, stop_after=1).run()
    (fixed,) = (tmp_path / "run" / "checkpoints").glob("fixed-*.pt")
    fixed.write_bytes(b"not the teacher")
    with pytest.raises(CheckpointError, match=r"frozen nodes' weights .* missing or damaged; start the run again"):
        Trainer(spec, tmp_path / "run", log=lambda *_: None, resume=True).run()
