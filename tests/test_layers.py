"""The import structure of ``pipeline`` and ``flows``, read statically by grimp (nothing is imported).

Every import counts: module-level, function-level (lazy) and ``if TYPE_CHECKING:`` ones. A lazy or
type-only import still ties two modules together, and it hides a cycle until someone moves it.
"""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("pipeline", "flows")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # cache_dir=None: no .grimp_cache folder is written into the work tree
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False, cache_dir=None)


def strongly_connected_components(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit): every strongly connected component of the directed
    graph ``edges`` (node -> the nodes it points to), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]  # (node, its successors not yet visited)
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges.get(nxt, ()))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:  # every successor seen: node is done
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def one_cycle(start: str, component: set[str], edges: dict[str, list[str]]) -> list[str]:
    """A shortest import chain from ``start`` back to itself inside ``component`` (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in edges[node]:
                if nxt not in component:
                    continue
                if nxt == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(parent[chain[-1]])
                    return [start, *reversed(chain[:-1]), start]
                if nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")  # cannot happen


def describe_chain(graph: grimp.ImportGraph, chain: list[str]) -> str:
    lines = []
    for importer, imported in zip(chain, chain[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"line {d['line_number']}: {d['line_contents'].strip()}" for d in details) or "?"
        lines.append(f"    {importer} -> {imported}  ({where})")
    return "\n".join(lines)


def test_strongly_connected_components_finds_cycles():
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["a"]}
    found = sorted(c for c in strongly_connected_components(sorted(edges), edges) if len(c) > 1)
    assert found == [["a", "b", "c"], ["d", "e"]]
    assert one_cycle("a", {"a", "b", "c"}, edges) == ["a", "b", "c", "a"]


def test_no_import_cycles(graph):
    """No group of modules imports itself round (counting lazy and TYPE_CHECKING imports): each module can be
    understood, tested and moved with only what it imports below it."""
    nodes = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in nodes}
    cycles = [c for c in strongly_connected_components(nodes, edges) if len(c) > 1]
    report = []
    for component in cycles:
        chain = one_cycle(component[0], set(component), edges)
        report.append(f"  cycle among {', '.join(component)}\n    for example:\n{describe_chain(graph, chain)}")
    assert not cycles, f"{len(cycles)} import cycle(s) in {', '.join(PACKAGES)}:\n" + "\n".join(report)


SHARDS_MUST_NOT_IMPORT = ("pipeline.run", "pipeline.filters", "pipeline.tasks", "pipeline.kinds", "flows")


def test_shards_import_no_higher_layer(graph):
    """``pipeline.shards`` imports nothing from the run, the filters, the tasks, the kinds or the flows: the
    output contract is the bottom layer (what a dataset on disk is must not depend on how it was made)."""
    found = []
    for higher in SHARDS_MUST_NOT_IMPORT:
        if higher not in graph.modules:  # not a package (no __init__.py): grimp sees no module in it to import
            continue
        if graph.chain_exists(importer="pipeline.shards", imported=higher, as_packages=True):
            chain = min(graph.find_shortest_chains(importer="pipeline.shards", imported=higher, as_packages=True))
            found.append(f"  pipeline.shards -> {higher}, for example:\n{describe_chain(graph, list(chain))}")
    assert not found, "pipeline.shards imports a higher layer:\n" + "\n".join(found)
