"""The value graph of a spec: who feeds whom, cycles, a stable order, what a set of ports needs.

Nodes and `data` are vertices; an arrow goes from each producer to each consumer of its ports.
Nothing here touches a tensor or a registry entry's code.
"""

from __future__ import annotations

from ..errors import PlanError, Problem
from ..registry import OPS
from .digraph import Digraph, ancestors, shortest_path, strongly_connected_components, topological_order
from .model import GraphSpec

DATA = "data"


def node_of(port: str) -> str:
    return port.split(".", 1)[0]


def port_of(port: str) -> str:
    return port.split(".", 1)[1]


def dataflow_graph(spec: GraphSpec, refs: bool = True) -> Digraph:
    """Nodes and `data`, with an arrow from each producer to each consumer of its ports.

    With `refs`, also from each node an op uses by name (``call``) to that op: it is built first and
    its weights take part in the op's gradient. Without, only value flow: what must run to compute a port.
    """
    g = Digraph([DATA, *spec.nodes])
    for name, node in spec.nodes.items():
        for port in node.inputs:
            if node_of(port) in g:
                g.add_edge(node_of(port), name)
        if refs:
            for ref in node_refs(spec, name):
                g.add_edge(ref, name)
    return g


def node_refs(spec: GraphSpec, name: str) -> list[str]:
    """Nodes an op uses by name rather than through a port (``call`` applies another node's module)."""
    node = spec.nodes[name]
    if node.kind != "op" or node.type not in OPS:
        return []
    keys = getattr(OPS.get(node.type).obj, "node_refs", ())
    return [node.params[k] for k in keys if isinstance(node.params.get(k), str) and node.params[k] in spec.nodes]


def cycle_problems(spec: GraphSpec) -> list[Problem]:
    """One problem per loop of the data-flow graph, printed `a -> b -> a`, at the first node's `in`."""
    g = dataflow_graph(spec)
    rank = {n: i for i, n in enumerate(spec.nodes)}
    problems = []
    for component in sorted(strongly_connected_components(g), key=lambda c: min(rank.get(n, -1) for n in c)):
        first = min(component, key=lambda n: rank.get(n, -1))
        if len(component) == 1 and not g.has_edge(first, first):
            continue
        sub = g.subgraph(component)  # the shortest loop through the file's first node of this knot
        names = [first, *min((shortest_path(sub, nxt, first) for nxt in sub.successors(first)), key=len)]
        problems.append(
            spec.problem(
                ("nodes", names[0], "in"),
                "cycle: " + " -> ".join(names),
                "a node cannot depend on its own output; break the loop",
                kind="cycle",
            )
        )
    return problems


def topo_order(spec: GraphSpec) -> list[str]:
    """Nodes in an order where every input is computed first; a cycle is a PlanError `a -> b -> a`."""
    cycles = cycle_problems(spec)
    if cycles:
        raise PlanError(cycles)
    g = dataflow_graph(spec)
    # stable: ties are broken by the order of the file
    rank = {n: i for i, n in enumerate(spec.nodes)}
    return [n for n in topological_order(g, key=lambda n: rank.get(n, -1)) if n != DATA]


def needed(order: list[str], g: Digraph, ports: list[str]) -> list[str]:
    """The nodes of `order` that must run to compute `ports` (their value-flow ancestors)."""
    targets = {node_of(p) for p in ports} - {DATA}
    needed = set(targets).union(*(ancestors(g, t) for t in targets)) if targets else set()
    return [n for n in order if n in needed]
