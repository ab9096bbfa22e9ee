"""The import structure of ``pipeline`` and ``flows``, read statically by grimp (nothing is imported).

Every import counts: module-level, function-level (lazy) and ``if TYPE_CHECKING:`` ones. A lazy or
type-only import still ties two modules together, and it hides a cycle until someone moves it.
The layers are docs/extending.md's; grimp checks them (``find_illegal_dependencies_for_layers``).
"""

from __future__ import annotations

import graphlib

import grimp
import pytest
from grimp import Layer

PACKAGES = ("pipeline", "flows")

# High to low: a module may import from its own layer's package and from lower layers, never from higher ones.
# A Layer of several packages: siblings that do not import each other.
LAYERS = (
    "pipeline.entry",  # the console script: the stop supervisor around the CLI
    "pipeline.cli",
    "pipeline.deploy",
    "flows",  # thin Prefect flows
    Layer("pipeline.run", "pipeline.train", "pipeline.view", "pipeline.report", "pipeline.serve"),
    "pipeline.config",  # the one run config: the shared sections and each registered kind's own
    "pipeline.kinds",  # the data kinds and their registry
    "pipeline.inputs",
    "pipeline.text",  # what kinds share: templates, edits, answers, mining
    "pipeline.settings",  # the settings mechanism and the shared sections (filter and engine sections beside them)
    "pipeline.filters",
    Layer("pipeline.shards", "pipeline.serve_workers"),  # the output contract; the server's engine processes
    "pipeline.engines",
    Layer("pipeline.records", "pipeline.raydata", "pipeline.progress", "pipeline.stop"),
    "pipeline.errors",
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # cache_dir=None: no .grimp_cache folder is written into the work tree
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False, cache_dir=None)


def describe_chain(graph: grimp.ImportGraph, chain) -> str:
    lines = []
    for importer, imported in zip(chain, chain[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"line {d['line_number']}: {d['line_contents'].strip()}" for d in details) or "?"
        lines.append(f"    {importer} -> {imported}  ({where})")
    return "\n".join(lines)


def test_no_import_cycles(graph):
    """No group of modules imports itself round (counting lazy and TYPE_CHECKING imports): each module can be
    understood, tested and moved with only what it imports below it."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it against the import direction
        pytest.fail(f"an import cycle in {', '.join(PACKAGES)}:\n{describe_chain(graph, cycle)}")


def _layer_names(layer: str | Layer) -> set[str]:
    return {layer} if isinstance(layer, str) else set(layer.module_tails)


def test_every_top_level_module_has_a_layer(graph):
    placed = set().union(*map(_layer_names, LAYERS))
    tops = {".".join(m.split(".")[:2]) for m in graph.modules if m.count(".") >= 1 and m.startswith("pipeline.")}
    assert tops, "expected the modules of pipeline"
    assert tops - placed == set(), "place these in LAYERS (and in docs/extending.md's layer list)"
    assert placed - tops - {"flows"} == set(), "LAYERS names modules that do not exist"


def test_imports_follow_the_layers(graph):
    """No module imports a higher layer, or a sibling of its layer; e.g. ``pipeline.shards`` (the output contract:
    what a dataset on disk is must not depend on how it was made) imports nothing from the run, the filters, the
    text tools, the kinds or the flows."""
    illegal = graph.find_illegal_dependencies_for_layers(layers=LAYERS)
    report = []
    for dep in sorted(illegal, key=lambda d: (d.importer, d.imported)):
        for route in sorted(dep.routes, key=lambda r: (r.heads, r.tails))[:3]:
            chain = [min(route.heads), *route.middle, min(route.tails)]
            report.append(f"  {dep.importer} -> {dep.imported}, for example:\n{describe_chain(graph, chain)}")
    assert not illegal, "imports against the layers:\n" + "\n".join(report)


def test_a_kind_imports_no_other_kind(graph):
    """Kinds are equal citizens: a kind's package (``pipeline/kinds/<name>/``: its logic and its ``schema``) imports
    the shared base and itself, never another kind (what two kinds share lives in ``kinds.base`` or
    ``pipeline.text``), so a new kind can be added, or one removed, without touching the others."""
    kinds = {m.split(".")[2] for m in graph.modules if m.startswith("pipeline.kinds.") and m.count(".") >= 2}
    kinds -= {"base"}
    assert {"negatives", "rationales", "pairs", "retrieval"} <= kinds
    crossing = []
    for mod in sorted(m for m in graph.modules if m.startswith("pipeline.kinds.") and m.split(".")[2] in kinds):
        for imported in graph.find_modules_directly_imported_by(mod):
            parts = imported.split(".")
            if parts[:2] == ["pipeline", "kinds"] and len(parts) > 2 and parts[2] in kinds - {mod.split(".")[2]}:
                crossing.append(f"  {mod} -> {imported}")
    assert not crossing, "a kind imports another kind:\n" + "\n".join(crossing)
