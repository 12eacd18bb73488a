"""The zoo-a graphs' learned parts get their gradients where the reference codes put them (VID, CC, FSP, KDSVD).

Every graph file is also validated, planned, run and exported by tests/test_graphs.py.
"""

from __future__ import annotations

import pytest
import torch

from .test_graphs import grads, one_edge_backward

pytestmark = pytest.mark.slow


def _learns(module: torch.nn.Module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads(module))


def test_vid_regressor_and_its_variance_learn_from_their_edge() -> None:
    graph = one_edge_backward("vid.yaml", "vid2")
    assert _learns(graph.nodes["vid2"]) and _learns(graph.nodes["student"])
    assert graph.nodes["vid2"].alpha.grad.abs().sum() > 0
    assert not _learns(graph.nodes["vid1"]) and all(g is None for g in grads(graph.nodes["teacher"]))


def test_cc_trains_both_embeddings_but_not_the_teacher() -> None:
    graph = one_edge_backward("cc.yaml", "cc")
    assert _learns(graph.nodes["embed_s"]) and _learns(graph.nodes["embed_t"]) and _learns(graph.nodes["student"])
    assert all(g is None for g in grads(graph.nodes["teacher"]))


def test_fsp_pretraining_reaches_the_body_not_the_classifier() -> None:
    graph = one_edge_backward("fsp.yaml", "fsp3")
    student = graph.nodes["student"]
    fc = [m for m in student.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert fc.weight.grad is None  # RepDistiller's init stage optimises get_feat_modules() only
    assert _learns(student)


def test_kdsvd_reaches_both_student_stages_of_its_pair() -> None:
    graph = one_edge_backward("kdsvd.yaml", "svd12")
    student = graph.nodes["student"]
    touched = {n.split(".")[0] for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # pred_prev (feat1) and pred (feat2) both carry gradient; feat3 and the classifier are not involved
    assert {"conv1", "layer1", "layer2"} <= touched and not touched & {"layer3", "fc"}
    assert all(g is None for g in grads(graph.nodes["teacher"]))
