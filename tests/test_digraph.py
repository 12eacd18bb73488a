"""The planner's directed graph: ancestors, knots, a stable order, shortest loops (kdgraph/spec/digraph.py)."""

from __future__ import annotations

import random

import pytest

from kdgraph.spec.digraph import Digraph, ancestors, shortest_path, strongly_connected_components, topological_order


def diamond() -> Digraph:
    g = Digraph(["data", "t", "s", "mix", "loss"])
    for u, v in [("data", "t"), ("data", "s"), ("t", "mix"), ("s", "mix"), ("mix", "loss"), ("t", "loss")]:
        g.add_edge(u, v)
    return g


def test_ancestors_order_and_knots_by_hand() -> None:
    g = diamond()
    assert ancestors(g, "loss") == {"data", "t", "s", "mix"} and ancestors(g, "data") == set()
    assert topological_order(g) == ["data", "t", "s", "mix", "loss"]  # ties: the order vertices were added
    assert topological_order(g, key={"data": 0, "t": 2, "s": 1, "mix": 3, "loss": 4}.get)[:3] == ["data", "s", "t"]
    assert sorted(map(sorted, strongly_connected_components(g))) == [["data"], ["loss"], ["mix"], ["s"], ["t"]]
    g.add_edge("loss", "t")  # t -> loss -> t, and t -> mix -> loss -> t
    assert sorted(map(sorted, strongly_connected_components(g))) == [["data"], ["loss", "mix", "t"], ["s"]]
    assert shortest_path(g, "loss", "mix") == ["loss", "t", "mix"]
    assert ancestors(g, "t") == {"data", "s", "mix", "loss"}  # never the vertex itself, even on a loop
    with pytest.raises(ValueError):
        topological_order(g)
    assert topological_order(g.subgraph(["data", "s", "mix"])) == ["data", "s", "mix"]


def test_agrees_with_networkx_on_random_graphs() -> None:
    nx = pytest.importorskip("networkx")
    rng = random.Random(0)
    for trial in range(200):
        names = [f"n{i}" for i in range(rng.randint(1, 10))]
        g, G = Digraph(names), nx.DiGraph()
        G.add_nodes_from(names)
        for _ in range(rng.randint(0, 20)):
            a, b = sorted(rng.choices(range(len(names)), k=2)) if trial % 2 else rng.choices(range(len(names)), k=2)
            g.add_edge(names[a], names[b])
            G.add_edge(names[a], names[b])
        assert all(ancestors(g, v) == nx.ancestors(G, v) for v in names)
        assert sorted(map(sorted, strongly_connected_components(g))) == sorted(
            map(sorted, nx.strongly_connected_components(G))
        )
        rank = {v: rng.randint(0, 3) for v in names}
        if nx.is_directed_acyclic_graph(G):
            assert topological_order(g, key=rank.get) == list(nx.lexicographical_topological_sort(G, key=rank.get))
