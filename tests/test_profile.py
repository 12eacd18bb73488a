"""kdgraph profile: per-node and per-loss times, backward and optimizer, that add up to the measured step."""

from __future__ import annotations

import re

import pytest

from kdgraph.cli import main

from .conftest import GRAPHS, SMOKE


@pytest.mark.slow
def test_profile_parts_add_up_to_the_measured_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(GRAPHS / "kd.yaml"), *SMOKE, "--steps", "5", "--warmup", "2"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines()[2:]:
        m = re.match(r"(forward \w+|loss \S+|backward|optimizer step)\s.*?(\d+\.\d{3})\s+\d+\.\d%", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    assert set(rows) == {
        "forward teacher",
        "forward student",
        "loss ce:data->student",
        "loss kd:teacher->student",
        "backward",
        "optimizer step",
    }
    assert re.search(r"net resnet32x4", out) and "images/s" in out
    step = float(re.search(r"measured step (\d+\.\d+) ms", out).group(1))
    parts = sum(rows.values())  # summed here from the printed rows, not taken from the tool's own total
    assert abs(parts - step) <= 0.15 * step, f"parts {parts:.3f} ms vs step {step:.3f} ms\n{out}"
    images = float(re.search(r"images/s (\d+)", out).group(1))
    assert images == pytest.approx(2 / (step / 1000), abs=1)  # batch 2 (SMOKE) per measured step


def test_profile_markdown_and_an_unknown_stage(capsys: pytest.CaptureFixture[str]) -> None:
    small = ["nodes.teacher.net=resnet8x4"]  # the layout only: a small teacher keeps it fast
    argv = ["profile", str(GRAPHS / "kd.yaml"), *SMOKE, *small, "--steps", "1", "--warmup", "0"]
    assert main([*argv, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| part | what | ms/step | share | act. MiB (est.) | peak MiB |" in out
    assert "| forward student | net resnet8x4 |" in out
    assert main([*argv, "--stage", "nope"]) == 2
    assert "no stage 'nope'" in capsys.readouterr().err
