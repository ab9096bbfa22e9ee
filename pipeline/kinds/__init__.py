"""The data kinds, each one declared object (:class:`pipeline.kinds.base.Kind`), in one explicit registry.

Everything that depends on a kind (the run path, the flow, the CLI, `deploy`, `inspect`, the trainer) looks it
up here: by name (``contrastgen generate <name>``) or by a dataset's manifest format (``contrastgen.<name>/1``).
Adding a kind: docs/extending.md.
"""

from __future__ import annotations

from pipeline.errors import ContrastgenError, DatasetError
from pipeline.kinds import negatives, pairs, rationales, retrieval
from pipeline.kinds.base import Kind
from pipeline.shards.folder import dataset_format

KINDS: dict[str, Kind] = {k.name: k for k in (negatives.KIND, rationales.KIND, pairs.KIND, retrieval.KIND)}


def kind_of(name: str) -> Kind:
    """The kind called ``name``; an error naming the known kinds otherwise."""
    if name not in KINDS:
        raise ContrastgenError(
            f"expected a data kind, one of {sorted(KINDS)}, got {name!r}. Fix: use one of those names"
        )
    return KINDS[name]


def format_of(kind: Kind) -> str:
    """The manifest format of a kind's datasets."""
    return dataset_format(kind.name)


def kind_of_format(fmt: str | None, where: object) -> Kind:
    """The kind whose datasets have manifest format ``fmt``; ``where`` (the manifest's path) names the file in the
    error."""
    for k in KINDS.values():
        if format_of(k) == fmt:
            return k
    raise DatasetError(
        f"{where}: expected format {' or '.join(repr(format_of(k)) for k in KINDS.values())}, found {fmt!r}. "
        "Fix: pass a folder written by `contrastgen generate`"
    )
