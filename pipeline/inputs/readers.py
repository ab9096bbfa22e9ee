"""Read captions from JSONL, CSV, Parquet or a saved `datasets` folder.

Row-level problems (malformed JSON line, invalid UTF-8, missing or empty field, over-long caption,
duplicate id) become :class:`Rejection` rows with file, line and field; valid rows are never lost
because of invalid ones. A file that cannot be read at all raises :class:`InputFileError`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import InputConfig
from pipeline.errors import InputFileError
from pipeline.records import CaptionRecord, Rejection

RawRow = tuple[int, dict[str, Any] | None, Rejection | None]  # (line, row, problem)


def _detect(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower()
    for name, exts in {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "parquet": (".parquet",)}.items():
        if suffix in exts:
            return name
    raise InputFileError(path, f"cannot tell the format from the extension {suffix!r}; expected .jsonl, .csv, "
                         ".parquet or a datasets folder. Fix: set input.format")


def _reject(path: Path, line: int, reason: str, detail: str, raw: str = "", field: str | None = None) -> Rejection:
    return Rejection(stage="input", reason=reason, detail=detail, raw=raw[:2000], file=str(path), line=line, field=field)


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, None, _reject(path, line_no, "invalid_utf8", str(exc), raw.decode("utf-8", "replace"))
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line_no, None, _reject(path, line_no, "malformed_json", exc.msg, text)
                continue
            if not isinstance(obj, dict):
                yield line_no, None, _reject(path, line_no, "malformed_json", "expected a JSON object", text)
                continue
            yield line_no, obj, None


def _csv_rows(path: Path, cfg: InputConfig) -> Iterator[RawRow]:
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for col in (cfg.id_column, cfg.caption_column):
            if col not in header:
                raise InputFileError(path, f"expected a column '{col}' in the CSV header, found {header}. "
                                     "Fix: set input.id_column / input.caption_column", line=1, field=col)
        for row in reader:
            line_no = reader.line_num
            bad = [k for k, v in row.items() if isinstance(v, str) and _has_surrogates(v)]
            if bad:
                raw = ",".join(v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for v in row.values() if isinstance(v, str))
                yield line_no, None, _reject(path, line_no, "invalid_utf8", "undecodable bytes", raw, bad[0])
                continue
            yield line_no, row, None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _table_rows(path: Path, fmt: str, cfg: InputConfig) -> Iterator[RawRow]:
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                raise InputFileError(path, f"expected one dataset, found splits {list(ds)}; point input.path at one split folder")
            table = ds.data.table
    except InputFileError:
        raise
    except Exception as exc:  # pyarrow/datasets raise many types; re-raise as one clear error
        raise InputFileError(path, f"cannot read as {fmt}: {exc}") from exc
    for col in (cfg.id_column, cfg.caption_column):
        if col not in table.column_names:
            raise InputFileError(path, f"expected a column '{col}', found {table.column_names}. "
                                 "Fix: set input.id_column / input.caption_column", field=col)
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row, None


def _validate(path: Path, line: int, row: dict[str, Any], cfg: InputConfig) -> CaptionRecord | Rejection:
    raw = json.dumps(row, ensure_ascii=False, default=str)
    for col in (cfg.id_column, cfg.caption_column):
        if row.get(col) is None:
            return _reject(path, line, "missing_field", f"expected field '{col}'", raw, col)
    rid, caption = row[cfg.id_column], row[cfg.caption_column]
    if not isinstance(caption, str):
        return _reject(path, line, "wrong_type", f"expected a string caption, got {type(caption).__name__}", raw, cfg.caption_column)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or not str(rid).strip():
        return _reject(path, line, "wrong_type", "expected a non-empty string or integer id", raw, cfg.id_column)
    caption = " ".join(caption.split())
    if not caption:
        return _reject(path, line, "empty_caption", "caption is empty or whitespace", raw, cfg.caption_column)
    if len(caption) > cfg.max_caption_chars:
        return _reject(path, line, "caption_too_long", f"{len(caption)} > {cfg.max_caption_chars} chars", raw, cfg.caption_column)
    image = row.get(cfg.image_column) if cfg.image_column else None
    return CaptionRecord(str(rid).strip(), caption, None if image is None else str(image), str(path), line)


def read_captions(cfg: InputConfig) -> tuple[list[CaptionRecord], list[Rejection]]:
    """All valid captions (first ``cfg.limit``) and all rejected rows, in file order."""
    if cfg.path is None:
        raise InputFileError("input.path", "no input file given. Fix: pass --input FILE")
    path = Path(cfg.path)
    if not path.exists():
        raise InputFileError(path, "file not found. Fix: check --input")
    fmt = _detect(path, cfg.format)
    rows = _jsonl_rows(path) if fmt == "jsonl" else _csv_rows(path, cfg) if fmt == "csv" else _table_rows(path, fmt, cfg)
    good: list[CaptionRecord] = []
    bad: list[Rejection] = []
    seen: set[str] = set()
    for line, row, problem in rows:
        if cfg.limit is not None and len(good) >= cfg.limit:
            break
        rec = problem if problem is not None else _validate(path, line, row, cfg)
        if isinstance(rec, CaptionRecord) and rec.id in seen:
            rec = _reject(path, line, "duplicate_id", f"id {rec.id!r} seen before", rec.caption, cfg.id_column)
        if isinstance(rec, CaptionRecord):
            seen.add(rec.id)
            good.append(rec)
        else:
            bad.append(rec)
    if not good and bad and all(r.reason == "missing_field" for r in bad):
        field = bad[0].field
        raise InputFileError(path, f"no row has the field '{field}'. Fix: set input.id_column / input.caption_column", field=field)
    return good, bad
