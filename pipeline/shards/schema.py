"""Explicit Arrow schemas of what every kind writes (raw parts, rejected rows, provenance columns); each kind
declares the schema of its own rows (:mod:`pipeline.kinds`) and becomes Arrow through :func:`rows_table`."""

from __future__ import annotations

from dataclasses import asdict, fields

import pyarrow as pa

from pipeline.records import Provenance, RawResult, Rejection

PROVENANCE_FIELDS = [
    pa.field("engine", pa.string()),
    pa.field("model", pa.string()),
    pa.field("prompt_sha", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("temperature", pa.float32()),
    pa.field("top_p", pa.float32()),
    pa.field("max_tokens", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("tokens_in", pa.int32()),
    pa.field("tokens_out", pa.int32()),
    pa.field("latency_s", pa.float32()),
]

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("task", pa.string()),
        pa.field("file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("unit_key", pa.string()),
        pa.field("prompt_sha", pa.string()),
        pa.field("model", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("filter", pa.string()),
        pa.field("score", pa.float32()),
    ]
)

RAW_SCHEMA = pa.schema(
    [
        pa.field("unit_key", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("source_text", pa.string()),
        pa.field("image_ref", pa.string()),
        pa.field("task", pa.string()),
        pa.field("texts", pa.list_(pa.string())),
        pa.field("finish_reasons", pa.list_(pa.string())),
        pa.field("code_version", pa.string()),
        *PROVENANCE_FIELDS,
        pa.field("group", pa.string()),
        pa.field("engine_s", pa.float64()),  # the unit's engine-seconds on its replica (pipeline.engines.metered)
        pa.field("accelerator", pa.string()),  # what the replica ran on: cpu, "<GPU name> x<count>", api
        pa.field("setup_s", pa.float64()),  # of engine_s, the unit's share of one-time work (pipeline.engines.metered)
    ]
)


def raw_part_of_earlier_version(table: pa.Table) -> pa.Table:
    """A raw part as this version reads it, so a run made by an earlier version resumes now (its unit keys did not
    change): the source text's column was called ``caption`` before issue 34, and parts written before input groups
    (issue 32) lack the ``group`` column (read as null: ungrouped), and parts written before issue 35 lack
    ``engine_s``, ``accelerator`` and ``setup_s`` (read as null: their engine time is unknown; the cost report counts
    those units apart). Any other schema is returned as it came."""
    if "caption" in table.column_names and "source_text" not in table.column_names:
        table = table.rename_columns(["source_text" if c == "caption" else c for c in table.column_names])
    for name in ("group", "engine_s", "accelerator", "setup_s"):
        if name not in table.column_names:
            field = RAW_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    if sorted(table.column_names) == sorted(RAW_SCHEMA.names):
        table = table.select(RAW_SCHEMA.names)  # the columns added above, in this version's order
    return table


def _flat(records) -> list[dict]:
    """Dataclass records as dicts with their ``provenance`` sub-record spread into top-level columns (one level
    of fields: ``asdict``'s deep copy cost 150 us a row in finalize, and pyarrow copies the values anyway)."""
    dicts = []
    for r in records:
        d = {f.name: getattr(r, f.name) for f in fields(r)}
        prov = d.pop("provenance")
        d.update((f.name, getattr(prov, f.name)) for f in fields(prov))
        dicts.append(d)
    return dicts


def rows_table(rows, schema: pa.Schema) -> pa.Table:
    """A kind's kept rows (dataclasses with a ``provenance`` sub-record) as a table of its schema."""
    return pa.Table.from_pylist(_flat(rows), schema=schema)


def rejected_table(rows: list[Rejection]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in rows], schema=REJECTED_SCHEMA)


def raw_table(rows: list[RawResult]) -> pa.Table:
    return pa.Table.from_pylist(_flat(rows), schema=RAW_SCHEMA)


def raw_results(table: pa.Table) -> list[RawResult]:
    prov_names = [f.name for f in PROVENANCE_FIELDS]
    out = []
    for d in table.to_pylist():
        prov = Provenance(**{k: d.pop(k) for k in prov_names})
        out.append(
            RawResult(
                **{**d, "texts": tuple(d["texts"]), "finish_reasons": tuple(d["finish_reasons"])}, provenance=prov
            )
        )
    return out
