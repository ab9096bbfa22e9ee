"""Read captions from JSONL, CSV, Parquet or a saved `datasets` folder.

Row-level problems (malformed JSON line, invalid UTF-8, missing or empty field, over-long caption,
duplicate id) become :class:`Rejection` rows with file, line and field; valid rows are never lost
because of invalid ones. A file that cannot be read at all raises :class:`InputFileError`.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline.errors import InputFileError
from pipeline.records import (
    CaptionRecord,
    PassageRecord,
    QuestionRecord,
    Reason,
    Rejection,
    RejectStage,
    SentenceRecord,
)
from pipeline.settings import InputConfig
from pipeline.text.answers import answer_kind_of, gold_answer

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
    raise InputFileError(
        path,
        f"cannot tell the format from the extension {suffix!r}; expected .jsonl, .csv, "
        ".parquet or a datasets folder. Fix: set input.format",
    )


def _reject(path: Path, line: int, reason: Reason, detail: str, raw: str = "", field: str | None = None) -> Rejection:
    return Rejection(
        stage=RejectStage.input, reason=reason, detail=detail, raw=raw[:2000], file=str(path), line=line, field=field
    )


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):  # Windows tools start UTF-8 files with a BOM
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line_no,
                    None,
                    _reject(path, line_no, Reason.invalid_utf8, str(exc), raw.decode("utf-8", "replace")),
                )
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line_no, None, _reject(path, line_no, Reason.malformed_json, exc.msg, text)
                continue
            if not isinstance(obj, dict):
                yield line_no, None, _reject(path, line_no, Reason.malformed_json, "expected a JSON object", text)
                continue
            yield line_no, obj, None


def _csv_rows(path: Path, required: dict[str, str]) -> Iterator[RawRow]:
    # utf-8-sig: a leading byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for setting, col in required.items():
            if col not in header:
                raise InputFileError(
                    path,
                    f"expected a column '{col}' in the CSV header, found {header}. Fix: set input.{setting}",
                    line=1,
                    field=col,
                )
        for row in reader:
            line_no = reader.line_num
            bad = [k for k, v in row.items() if isinstance(v, str) and _has_surrogates(v)]
            if bad:
                raw = ",".join(
                    v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    for v in row.values()
                    if isinstance(v, str)
                )
                yield line_no, None, _reject(path, line_no, Reason.invalid_utf8, "undecodable bytes", raw, bad[0])
                continue
            yield line_no, row, None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _table_rows(path: Path, fmt: str, required: dict[str, str]) -> Iterator[RawRow]:
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                raise InputFileError(
                    path, f"expected one dataset, found splits {list(ds)}; point input.path at one split folder"
                )
            table = ds.data.table
    except InputFileError:
        raise
    except Exception as exc:  # pyarrow/datasets raise many types; re-raise as one clear error
        raise InputFileError(path, f"cannot read as {fmt}: {exc}") from exc
    for setting, col in required.items():
        if col not in table.column_names:
            raise InputFileError(
                path, f"expected a column '{col}', found {table.column_names}. Fix: set input.{setting}", field=col
            )
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row, None


def _validate(path: Path, line: int, row: dict[str, Any], cfg: InputConfig) -> CaptionRecord | Rejection:
    raw = json.dumps(row, ensure_ascii=False, default=str)
    for col in (cfg.id_column, cfg.caption_column):
        if row.get(col) is None:
            return _reject(path, line, Reason.missing_field, f"expected field '{col}'", raw, col)
    rid, caption = row[cfg.id_column], row[cfg.caption_column]
    if not isinstance(caption, str):
        return _reject(
            path,
            line,
            Reason.wrong_type,
            f"expected a string caption, got {type(caption).__name__}",
            raw,
            cfg.caption_column,
        )
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or not str(rid).strip():
        return _reject(path, line, Reason.wrong_type, "expected a non-empty string or integer id", raw, cfg.id_column)
    caption = " ".join(caption.split())
    if not caption:
        return _reject(path, line, Reason.empty_caption, "caption is empty or whitespace", raw, cfg.caption_column)
    if len(caption) > cfg.max_caption_chars:
        return _reject(
            path,
            line,
            Reason.caption_too_long,
            f"{len(caption)} > {cfg.max_caption_chars} chars",
            raw,
            cfg.caption_column,
        )
    image = row.get(cfg.image_column) if cfg.image_column else None
    group = None
    if cfg.group_column:
        group = row.get(cfg.group_column)
        if group is None:
            return _reject(
                path,
                line,
                Reason.missing_field,
                f"expected field '{cfg.group_column}' (input.group_column)",
                raw,
                cfg.group_column,
            )
        if not isinstance(group, (str, int)) or isinstance(group, bool) or not str(group).strip():
            return _reject(
                path, line, Reason.wrong_type, "expected a non-empty string or integer group", raw, cfg.group_column
            )
        group = str(group).strip()
    return CaptionRecord(str(rid).strip(), caption, None if image is None else str(image), str(path), line, group)


def _rows(cfg: InputConfig, required: dict[str, str]) -> tuple[Path, Iterator[RawRow]]:
    """The input file and its rows (line, row or problem) in file order, in any supported format."""
    if cfg.path is None:
        raise InputFileError("input.path", "no input file given. Fix: pass --input FILE")
    path = Path(cfg.path)
    if not path.exists():
        raise InputFileError(path, "file not found. Fix: check --input")
    fmt = _detect(path, cfg.format)
    rows = (
        _jsonl_rows(path)
        if fmt == "jsonl"
        else _csv_rows(path, required)
        if fmt == "csv"
        else _table_rows(path, fmt, required)
    )
    return path, rows


def _collect(path: Path, rows: Iterator[RawRow], validate, limit: int | None, id_field: str):
    """Valid records (first ``limit``) and rejected rows; a repeated id is rejected as duplicate_id."""
    good: list[Any] = []
    bad: list[Rejection] = []
    seen: set[str] = set()
    for line, row, problem in rows:
        if limit is not None and len(good) >= limit:
            break
        rec = problem if problem is not None else validate(path, line, row)
        if not isinstance(rec, Rejection) and rec.id in seen:
            rec = _reject(
                path,
                line,
                Reason.duplicate_id,
                f"id {rec.id!r} seen before",
                json.dumps(row, ensure_ascii=False, default=str),
                id_field,
            )
        if not isinstance(rec, Rejection):
            seen.add(rec.id)
            good.append(rec)
        else:
            bad.append(rec)
    if not good and bad and all(r.reason == Reason.missing_field for r in bad):
        field = bad[0].field
        raise InputFileError(
            path, f"no row has the field '{field}'. Fix: set the input.*_column setting that names it", field=field
        )
    return good, bad


def read_captions(cfg: InputConfig) -> tuple[list[CaptionRecord], list[Rejection]]:
    """All valid captions (first ``cfg.limit``) and all rejected rows, in file order."""
    required = {"id_column": cfg.id_column, "caption_column": cfg.caption_column}
    if cfg.group_column:
        required["group_column"] = cfg.group_column
    path, rows = _rows(cfg, required)
    return _collect(path, rows, lambda p, line, row: _validate(p, line, row, cfg), cfg.limit, cfg.id_column)


def _choices(value: Any) -> tuple[str, ...] | None:
    """Options as a tuple of strings: a list, or the Hugging Face layout {label: [...], text: [...]}; None if
    neither."""
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        value = value["text"]
    if isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value) and 0 < len(value) <= 5:
        return tuple(" ".join(c.split()) for c in value)
    return None


def _text(
    path: Path, line: int, row: dict[str, Any], column: str, what: str, cfg: InputConfig, raw: str
) -> str | Rejection:
    """The whitespace-normalised text of ``column``, or the rejection naming file, line and field."""
    value = row.get(column)
    if value is None:
        return _reject(path, line, Reason.missing_field, f"expected field '{column}'", raw, column)
    if not isinstance(value, str) or not " ".join(value.split()):
        return _reject(path, line, Reason.empty_caption, f"expected a non-empty {what} string", raw, column)
    text = " ".join(value.split())
    if len(text) > cfg.max_caption_chars:
        return _reject(path, line, Reason.caption_too_long, f"{len(text)} > {cfg.max_caption_chars} chars", raw, column)
    return text


def _optional_id(
    path: Path, line: int, row: dict[str, Any], cfg: InputConfig, text: str, prefix: str, raw: str
) -> str | Rejection:
    """The row's id, or (files without one: GSM8K, SVAMP, SNLI) a hash of its text."""
    rid = row.get(cfg.id_column)
    if rid is None:
        return prefix + hashlib.sha256(text.encode()).hexdigest()[:12]
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or not str(rid).strip():
        return _reject(path, line, Reason.wrong_type, "expected a non-empty string or integer id", raw, cfg.id_column)
    return str(rid).strip()


def _validate_question(
    path: Path, line: int, row: dict[str, Any], cfg: InputConfig, kind: Literal["auto", "number", "choice"]
) -> QuestionRecord | Rejection:
    raw = json.dumps(row, ensure_ascii=False, default=str)
    question = _text(path, line, row, cfg.question_column, "question", cfg, raw)
    if isinstance(question, Rejection):
        return question
    choices: tuple[str, ...] = ()
    if cfg.choices_column and row.get(cfg.choices_column) is not None:
        parsed = _choices(row[cfg.choices_column])
        if parsed is None:
            return _reject(
                path,
                line,
                Reason.wrong_type,
                "expected 1-5 choice strings (a list, or {label, text})",
                raw,
                cfg.choices_column,
            )
        choices = parsed
    answer_kind = answer_kind_of(kind, choices)
    gold = None
    if cfg.answer_column and row.get(cfg.answer_column) is not None:
        gold = gold_answer(row[cfg.answer_column], answer_kind, choices)
        if gold is None:
            return _reject(
                path,
                line,
                Reason.bad_answer,
                f"expected a {answer_kind} answer (or a solution ending in '#### x')",
                raw,
                cfg.answer_column,
            )
    rid = _optional_id(path, line, row, cfg, question, "q-", raw)
    return rid if isinstance(rid, Rejection) else QuestionRecord(rid, question, gold, choices, str(path), line)


def read_questions(
    cfg: InputConfig, answer_kind: Literal["auto", "number", "choice"] = "auto"
) -> tuple[list[QuestionRecord], list[Rejection]]:
    """All valid questions (first ``cfg.limit``) and all rejected rows, in file order. The id column is
    optional (a missing id is the hash of the question); the gold answer is optional (the vote labels)."""
    path, rows = _rows(cfg, {"question_column": cfg.question_column})
    return _collect(
        path, rows, lambda p, line, row: _validate_question(p, line, row, cfg, answer_kind), cfg.limit, cfg.id_column
    )


TextRecord = TypeVar("TextRecord", SentenceRecord, PassageRecord)


def _validate_text_row(
    path: Path,
    line: int,
    row: dict[str, Any],
    cfg: InputConfig,
    column: str,
    what: str,
    prefix: str,
    record: type[TextRecord],
) -> TextRecord | Rejection:
    """One text with an optional id (a missing id is ``prefix`` + the text's hash): a sentence or a passage."""
    raw = json.dumps(row, ensure_ascii=False, default=str)
    text = _text(path, line, row, column, what, cfg, raw)
    if isinstance(text, Rejection):
        return text
    rid = _optional_id(path, line, row, cfg, text, prefix, raw)
    return rid if isinstance(rid, Rejection) else record(rid, text, str(path), line)


def read_sentences(cfg: InputConfig) -> tuple[list[SentenceRecord], list[Rejection]]:
    """All valid sentences (first ``cfg.limit``) and all rejected rows, in file order; the id column is optional
    (a missing id is the sentence's hash, so a repeated sentence is a duplicate_id)."""
    path, rows = _rows(cfg, {"sentence_column": cfg.sentence_column})
    check = functools.partial(
        _validate_text_row, cfg=cfg, column=cfg.sentence_column, what="sentence", prefix="s-", record=SentenceRecord
    )
    return _collect(path, rows, check, cfg.limit, cfg.id_column)


def read_passages(cfg: InputConfig) -> tuple[list[PassageRecord], list[Rejection]]:
    """Retrieval: all valid passages (first ``cfg.limit``) and all rejected rows, in file
    order; the id column is optional (a missing id is the passage's hash, so a repeated passage is a duplicate_id)."""
    path, rows = _rows(cfg, {"passage_column": cfg.passage_column})
    check = functools.partial(
        _validate_text_row, cfg=cfg, column=cfg.passage_column, what="passage", prefix="p-", record=PassageRecord
    )
    return _collect(path, rows, check, cfg.limit, cfg.id_column)
