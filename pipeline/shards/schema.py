"""Explicit Arrow schemas of everything contrastgen writes; records become Arrow only here."""

from __future__ import annotations

from dataclasses import asdict

import pyarrow as pa

from pipeline.records import (
    NegativeRow,
    PairRow,
    Provenance,
    RationaleRow,
    RawResult,
    Rejection,
)

PROVENANCE_FIELDS = [
    pa.field("engine", pa.string()), pa.field("model", pa.string()), pa.field("prompt_sha", pa.string()),
    pa.field("mode", pa.string()), pa.field("temperature", pa.float32()), pa.field("top_p", pa.float32()),
    pa.field("max_tokens", pa.int32()), pa.field("seed", pa.int64()), pa.field("tokens_in", pa.int32()),
    pa.field("tokens_out", pa.int32()), pa.field("latency_s", pa.float32()),
]

# Ordered so that select_columns(["caption", "positive", "negative"]) feeds sentence-transformers.
NEGATIVES_SCHEMA = pa.schema([
    pa.field("caption", pa.string()), pa.field("positive", pa.string()), pa.field("negative", pa.string()),
    pa.field("neg_type", pa.string()), pa.field("id", pa.string()), pa.field("source_id", pa.string()),
    pa.field("image_ref", pa.string()), pa.field("surface_sim", pa.float32()), pa.field("edit", pa.string()),
    pa.field("positive_prompt_sha", pa.string()), *PROVENANCE_FIELDS,
    pa.field("semantic_sim", pa.float32()), pa.field("propensity", pa.float32()), pa.field("weight", pa.float32()),
])

# Question as the anchor: select_columns(["question", "positive", "negative"]) feeds sentence-transformers.
RATIONALES_SCHEMA = pa.schema([
    pa.field("question", pa.string()), pa.field("positive", pa.string()), pa.field("negative", pa.string()),
    pa.field("neg_source", pa.string()), pa.field("answer", pa.string()), pa.field("label_source", pa.string()),
    pa.field("pos_answer", pa.string()), pa.field("neg_answer", pa.string()), pa.field("votes_for_label", pa.int32()),
    pa.field("votes_total", pa.int32()), pa.field("pos_quality", pa.float32()), pa.field("neg_quality", pa.float32()),
    pa.field("id", pa.string()), pa.field("source_id", pa.string()), pa.field("pos_seed", pa.int64()),
    *PROVENANCE_FIELDS,
    pa.field("surface_sim", pa.float32()), pa.field("semantic_sim", pa.float32()), pa.field("propensity", pa.float32()),
    pa.field("weight", pa.float32()),
])

# Anchor first: select_columns(["anchor", "positive", "negative"]) feeds sentence-transformers.
PAIRS_SCHEMA = pa.schema([
    pa.field("anchor", pa.string()), pa.field("positive", pa.string()), pa.field("negative", pa.string()),
    pa.field("pos_score", pa.int32()), pa.field("neg_score", pa.int32()), pa.field("swapped", pa.bool_()),
    pa.field("pos_instruction", pa.string()), pa.field("neg_instruction", pa.string()), pa.field("id", pa.string()),
    pa.field("source_id", pa.string()), pa.field("judge_model", pa.string()), *PROVENANCE_FIELDS,
    pa.field("surface_sim", pa.float32()), pa.field("semantic_sim", pa.float32()), pa.field("propensity", pa.float32()),
    pa.field("weight", pa.float32()),
])

REJECTED_SCHEMA = pa.schema([
    pa.field("stage", pa.string()), pa.field("reason", pa.string()), pa.field("detail", pa.string()),
    pa.field("raw", pa.string()), pa.field("source_id", pa.string()), pa.field("task", pa.string()),
    pa.field("file", pa.string()), pa.field("line", pa.int64()), pa.field("field", pa.string()),
    pa.field("unit_key", pa.string()), pa.field("prompt_sha", pa.string()), pa.field("model", pa.string()),
    pa.field("seed", pa.int64()), pa.field("filter", pa.string()), pa.field("score", pa.float32()),
])

RAW_SCHEMA = pa.schema([
    pa.field("unit_key", pa.string()), pa.field("source_id", pa.string()), pa.field("caption", pa.string()),
    pa.field("image_ref", pa.string()), pa.field("task", pa.string()), pa.field("texts", pa.list_(pa.string())),
    pa.field("finish_reasons", pa.list_(pa.string())),
    pa.field("code_version", pa.string()), *PROVENANCE_FIELDS,
])


def _flat(records) -> list[dict]:
    """Dataclass records as dicts with their ``provenance`` sub-record spread into top-level columns."""
    dicts = []
    for r in records:
        d = asdict(r)
        d.update(d.pop("provenance"))
        dicts.append(d)
    return dicts


def negatives_table(rows: list[NegativeRow]) -> pa.Table:
    return pa.Table.from_pylist(_flat(rows), schema=NEGATIVES_SCHEMA)


def rationales_table(rows: list[RationaleRow]) -> pa.Table:
    return pa.Table.from_pylist(_flat(rows), schema=RATIONALES_SCHEMA)


def pairs_table(rows: list[PairRow]) -> pa.Table:
    return pa.Table.from_pylist(_flat(rows), schema=PAIRS_SCHEMA)


def rejected_table(rows: list[Rejection]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in rows], schema=REJECTED_SCHEMA)


def raw_table(rows: list[RawResult]) -> pa.Table:
    return pa.Table.from_pylist(_flat(rows), schema=RAW_SCHEMA)


def raw_results(table: pa.Table) -> list[RawResult]:
    prov_names = [f.name for f in PROVENANCE_FIELDS]
    out = []
    for d in table.to_pylist():
        prov = Provenance(**{k: d.pop(k) for k in prov_names})
        out.append(RawResult(**{**d, "texts": tuple(d["texts"]), "finish_reasons": tuple(d["finish_reasons"])}, provenance=prov))
    return out
