"""A directed graph of names and the four questions the planner asks of it (networkx: 0.1 s of import).

    g = Digraph(["data", "teacher", "student"]); g.add_edge("data", "teacher")
    ancestors(g, "student")                  # every vertex with a path to it
    strongly_connected_components(g)         # the knots (a cycle is one with two vertices or a self-loop)
    topological_order(g, key=rank.get)      # inputs first; ties by key, then by insertion
    shortest_path(g, "a", "c")               # ["a", "b", "c"], breadth first

Vertices and arrows keep their insertion order, so every answer is deterministic.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any


class Digraph:
    def __init__(self, vertices: Iterable[Hashable] = ()) -> None:
        self._succ: dict[Hashable, dict[Hashable, None]] = {}
        self._pred: dict[Hashable, dict[Hashable, None]] = {}
        for v in vertices:
            self.add_node(v)

    def add_node(self, v: Hashable) -> None:
        self._succ.setdefault(v, {})
        self._pred.setdefault(v, {})

    def add_edge(self, u: Hashable, v: Hashable) -> None:
        self.add_node(u)
        self.add_node(v)
        self._succ[u][v] = None
        self._pred[v][u] = None

    def __contains__(self, v: object) -> bool:
        return v in self._succ

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._succ)

    def __len__(self) -> int:
        return len(self._succ)

    def successors(self, v: Hashable) -> list[Hashable]:
        return list(self._succ[v])

    def predecessors(self, v: Hashable) -> list[Hashable]:
        return list(self._pred[v])

    def has_edge(self, u: Hashable, v: Hashable) -> bool:
        return v in self._succ.get(u, ())

    def subgraph(self, vertices: Iterable[Hashable]) -> Digraph:
        keep = set(vertices)
        sub = Digraph(v for v in self._succ if v in keep)
        for u in sub:
            for v in self._succ[u]:
                if v in keep:
                    sub.add_edge(u, v)
        return sub


def ancestors(g: Digraph, v: Hashable) -> set[Hashable]:
    """Every vertex with a path to `v`, never `v` itself (as networkx, even on a cycle)."""
    seen: set[Hashable] = set()
    todo = list(g.predecessors(v))
    while todo:
        u = todo.pop()
        if u not in seen:
            seen.add(u)
            todo.extend(g.predecessors(u))
    seen.discard(v)
    return seen


def strongly_connected_components(g: Digraph) -> list[set[Hashable]]:
    """Tarjan's algorithm, iterative (no recursion limit): each vertex in exactly one component."""
    index: dict[Hashable, int] = {}
    low: dict[Hashable, int] = {}
    stack: list[Hashable] = []
    on_stack: set[Hashable] = set()
    components: list[set[Hashable]] = []
    for root in g:
        if root in index:
            continue
        work = [(root, iter(g.successors(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(g.successors(child))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                components.append(component)
    return components


def topological_order(g: Digraph, key: Callable[[Any], Any] | None = None) -> list[Hashable]:
    """Every vertex after all its predecessors; among the ready ones the smallest `key`, then the first added.

    Raises ValueError on a cycle.
    """
    position = {v: i for i, v in enumerate(g)}
    rank = key or (lambda v: 0)
    waiting = {v: len(g.predecessors(v)) for v in g}
    ready = [(rank(v), position[v], v) for v, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        *_, v = heapq.heappop(ready)
        order.append(v)
        for w in g.successors(v):
            waiting[w] -= 1
            if waiting[w] == 0:
                heapq.heappush(ready, (rank(w), position[w], w))
    if len(order) != len(g):
        raise ValueError("the graph has a cycle")
    return order


def shortest_path(g: Digraph, source: Hashable, target: Hashable) -> list[Hashable]:
    """The fewest arrows from `source` to `target`, breadth first (ValueError when there is no path)."""
    parent: dict[Hashable, Hashable | None] = {source: None}
    todo = deque([source])
    while todo:
        u = todo.popleft()
        if u == target:
            path = [u]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])
            return path[::-1]
        for v in g.successors(u):
            if v not in parent:
                parent[v] = u
                todo.append(v)
    raise ValueError(f"no path from {source!r} to {target!r}")
