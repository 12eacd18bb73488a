"""Schedules: every graph-file form, CTKD's lambda(epoch), and clear errors for malformed mappings."""

from __future__ import annotations

import math

import pytest

from kdgraph.schedule import Schedule, is_schedule_spec, value_at


def test_constant() -> None:
    s = Schedule.from_spec(0.9)
    assert [s.at(e) for e in (1, 50, 240)] == [0.9, 0.9, 0.9]
    assert s.is_constant and s.to_spec() == 0.9


def test_warmup_is_dkd_ramp() -> None:
    s = Schedule.from_spec({"value": 8.0, "warmup": 20})
    assert s.at(1) == pytest.approx(8.0 / 20)
    assert s.at(10) == pytest.approx(4.0)
    assert s.at(20) == s.at(21) == s.at(240) == 8.0


def test_until_drops_after_epoch() -> None:
    s = Schedule.from_spec({"value": 0.9, "until": 60})
    assert s.at(60) == 0.9 and s.at(61) == 0.0


def test_from_starts_at_epoch() -> None:
    s = Schedule.from_spec({"value": 2.0, "from": 5})
    assert s.at(4) == 0.0 and s.at(5) == 2.0 and s.at(100) == 2.0


def test_combined_value_keys() -> None:
    s = Schedule.from_spec({"value": 8.0, "warmup": 20, "until": 30})
    assert s.at(10) == pytest.approx(4.0) and s.at(30) == 8.0 and s.at(31) == 0.0


def test_ctkd_lambda_sequence() -> None:
    s = Schedule.from_spec({"cosine": [0, -1], "epochs": 10})
    expected = [(math.cos(min(e, 10) * math.pi / 10) + 1) / 2 - 1 for e in range(1, 16)]
    assert [s.at(e) for e in range(1, 16)] == pytest.approx(expected, abs=1e-12)
    assert s.at(10) == pytest.approx(-1.0) and s.at(240) == pytest.approx(-1.0)
    assert s.at(5) == pytest.approx(-0.5)


def test_linear() -> None:
    s = Schedule.from_spec({"linear": [1.0, 3.0], "epochs": 4})
    assert [s.at(e) for e in (0, 1, 2, 4, 9)] == pytest.approx([1.0, 1.5, 2.0, 3.0, 3.0])


def test_round_trip_and_helpers() -> None:
    for spec in (2.5, {"value": 1.0, "warmup": 3}, {"cosine": [0.0, -1.0], "epochs": 10}, {"value": 1.0, "from": 2}):
        assert Schedule.from_spec(Schedule.from_spec(spec).to_spec()) == Schedule.from_spec(spec)
    assert is_schedule_spec({"value": 1, "warmup": 2}) and is_schedule_spec({"cosine": [0, 1], "epochs": 2})
    assert not is_schedule_spec(3.0) and not is_schedule_spec({"type": "step"})
    assert value_at(Schedule.from_spec({"value": 4, "warmup": 4}), 2) == 2.0 and value_at(7, 2) == 7


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"value": 1, "warmpu": 20}, "warmpu"),
        ({"value": "x"}, "'value' must be a number"),
        ({"value": 1, "warmup": 0}, "'warmup' must be an integer >= 1"),
        ({"value": 1, "until": 2.5}, "'until' must be an integer"),
        ({"cosine": [0, -1]}, "needs 'epochs'"),
        ({"cosine": [0], "epochs": 3}, "two numbers"),
        ({"cosine": [0, 1], "linear": [0, 1], "epochs": 3}, "not both"),
        ({"cosine": [0, 1], "epochs": 3, "value": 1}, "unexpected key"),
        ({"type": "step"}, "unrecognised schedule"),
        ("0.5", "a number or a mapping"),
        (True, "a number or a mapping"),
    ],
)
def test_malformed(spec: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Schedule.from_spec(spec)
