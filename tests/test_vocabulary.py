"""One vocabulary: the codes the data holds (rejection reasons, rejection stages, filter names, engine kinds) are
defined once, each with its meaning, and the code names them instead of repeating strings.

The static check reads the source of ``pipeline`` and ``flows`` with ``ast``: a reason code written as a string,
or a bare code where rejections are made, fails it. mypy checks the typed paths: ``Rejection``, ``Failure``,
``Drop``, ``EngineFailure`` and ``raw_rejection`` take the enums, not ``str``; ``strict_equality`` makes a
comparison of ``engine.kind`` with a string that is no ``EngineKind`` an error.
"""

from __future__ import annotations

import ast
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow as pa
import pytest

from pipeline.engines.base import ENGINES
from pipeline.engines.config import ENGINE_KINDS, EngineConfig
from pipeline.filters.config import FILTERS, FilterConfig, FilterName
from pipeline.filters.semantic import semantic_reasons
from pipeline.kinds.pairs import keep_rule
from pipeline.kinds.rationales import parse_sample
from pipeline.records import REASONS, REJECT_STAGES, Reason, Rejection, RejectStage, StrCode
from pipeline.shards.schema import rejected_table
from pipeline.text.edits import parse_answer
from pipeline.text.mining import candidate_reasons
from pipeline.text.queries import check_query

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "pipeline" / "records.py"
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
ENUMS: tuple[tuple[type[StrCode], dict], ...] = (
    (Reason, REASONS),
    (RejectStage, REJECT_STAGES),
    (FilterName, FILTERS),
)
# What makes a rejected row: the reason, stage and filter positions of these calls take enum members only.
PRODUCERS = {"Failure", "Rejection", "EngineFailure", "Drop", "raw_rejection", "_reject", "_rejection", "FunnelStep"}
PRODUCERS |= {"step"}  # the filter stage's _Why.step(filter, reasons, ...)
CODE_KEYWORDS = {"reason", "stage", "filter"}


@pytest.mark.parametrize("enum, meanings", ENUMS, ids=[e.__name__ for e, _ in ENUMS])
def test_each_code_is_its_own_name_and_has_a_one_line_meaning(enum, meanings):
    assert list(meanings) == list(enum), f"{enum.__name__}: give every member one meaning, in the members' order"
    for m in enum:
        assert m.name == m.value and CODE.match(m.value), f"{m!r}: a member is named as its code"
        assert not hasattr(str, m.name), f"{m.name} hides str.{m.name}"
        text = meanings[m]
        assert text.strip() and "\n" not in text and len(text) <= 120, f"{m.value}: one line of meaning"


def test_a_code_is_written_as_its_plain_string():
    """str(), format(), JSON, numpy and Arrow write the code; a rejected shard is byte-identical to one written
    from plain strings."""
    r = Reason.span_not_found
    assert (str(r), f"{r}", f"{r:>15}", "%s" % r) == ("span_not_found", "span_not_found", " span_not_found", r.value)
    assert json.dumps({r: [r, RejectStage.generation]}) == '{"span_not_found": ["span_not_found", "generation"]}'
    assert np.array([r, ""], dtype=object).astype(str).tolist() == ["span_not_found", ""]

    def ipc(table: pa.Table) -> bytes:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return sink.getvalue()

    members = rejected_table([Rejection(RejectStage.filter, Reason.near_duplicate, filter=FilterName.dedup)])
    plain = rejected_table([Rejection("filter", "near_duplicate", filter="dedup")])  # as strings were written before
    assert members.column("reason").to_pylist() == ["near_duplicate"]
    assert type(members.column("stage").to_pylist()[0]) is str
    assert ipc(members) == ipc(plain)


def test_the_filter_sections_and_the_engine_kinds_are_the_named_ones():
    assert set(FilterConfig.model_fields) <= set(FilterName), "name each filter section in FilterName"
    kind = EngineConfig.model_fields["kind"].annotation
    assert get_args(kind) == ENGINE_KINDS, "EngineConfig.kind is the EngineKind Literal"
    assert set(ENGINES) == set(ENGINE_KINDS), "pipeline.engines.base.ENGINES builds every engine kind"


def test_the_rules_give_enum_members():
    """The producers that build their codes at run time (numpy rule tables, returned tuples) give members: a new
    rule written as a plain string fails here even before it reaches a rejected row."""
    from pipeline.text.mining import MiningConfig

    s_neg, s_pos = np.array([0.995, 0.97, 0.1, 0.8, 0.6, 0.3]), np.array([0.5, 0.5, 0.5, 0.82, 0.7, 0.9])
    rules = dict(false_negative=0.99, max_score=0.95, min_score=0.2, absolute_margin=0.05, relative_margin=0.2)
    semantic = semantic_reasons(s_neg, s_pos, **rules).tolist()
    mining = candidate_reasons(np.array([0.95, 0.9, 0.78]), 0.8, MiningConfig(absolute_margin=0.01, max_score=0.9))
    rationale = [parse_sample(t, f, "number", (), 20) for t, f in (("x", "length"), ("Sorry, no.", "stop"))]
    rationale += [parse_sample("short", "stop", "number", (), 20), parse_sample("a" * 30, "stop", "number", (), 20)]
    made = [
        *[r for r in semantic if r],
        *[r for r in mining.tolist() if r],
        *[r for r, _ in rationale],
        *[keep_rule(p, n, 3, 3)[2] for p, n in ((2, 2), (2, 1), (5, 4))],
        *[f.reason for f in (parse_answer("A dog runs.", t, "swap") for t in ("", "cat <-> dog", "a <-> a"))],
        *[check_query(t, "stop", "Mars is red.", "question", 3).reason for t in ("Mars is red.", "Why is it so red?")],
    ]
    assert all(type(r) is Reason for r in made), [r for r in made if type(r) is not Reason]
    assert semantic[-1] == "" and len(set(semantic)) == len(semantic), "every semantic rule, then a kept row"
    assert mining.astype(str).tolist() == ["above_max_score", "absolute_margin", "positive_aware"]


@dataclass(frozen=True)
class Spelled:
    path: str
    line: int
    value: str
    where: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.value!r} ({self.where})"


def _sources() -> list[Path]:
    return sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))


def _name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _strings(node: ast.AST):
    """The string constants of the value ``node``, without f-strings' text (free text, never a code) and without
    the arguments of calls inside it (``raw.decode("utf-8", "replace")``), except ``np.where``'s (a choice of
    codes)."""
    if isinstance(node, ast.JoinedStr):
        return
    if _string(node) is not None:
        yield node
    if isinstance(node, ast.Call):
        yield from _strings(node.func)
        if _name(node) == "where":
            for a in node.args:
                yield from _strings(a)
        return
    for child in ast.iter_child_nodes(node):
        yield from _strings(child)


def _code_positions(tree: ast.AST):
    """(node, what) for every place a code is made: a producer's arguments, a ``reason=``/``stage=``/``filter=``
    keyword, what is assigned to an item of a name that says ``reason`` (``reasons[hit] = ...``) or to ``rules``
    (a rule table), and what a function returning a ``Reason`` returns."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if _name(node) in PRODUCERS:
                yield from ((a, f"{_name(node)}()") for a in node.args)
            yield from ((k.value, f"{k.arg}=") for k in node.keywords if k.arg in CODE_KEYWORDS)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]:
                items = isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and "reason" in t.value.id
                if node.value and (items or (isinstance(t, ast.Name) and t.id == "rules")):
                    yield node.value, f"{ast.unparse(t)} = "
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "Reason" in ast.unparse(
            node.returns or ast.Pass()
        ):
            for r in ast.walk(node):
                if isinstance(r, ast.Return) and r.value is not None:
                    yield r.value, f"return of {node.name}()"


def code_literals(tree: ast.AST, path: str) -> list[Spelled]:
    """String literals where a code belongs: a code-like string (``too_long``) in a place a code is made
    (:func:`_code_positions`), and any reason code written as a string outside a docstring, a dict key, an index
    or a ``.get``/``.pop`` key (which name columns and fields, not reasons)."""
    reasons = {r.value for r in Reason}
    found: dict[tuple[int, int], Spelled] = {}  # by place: the first rule that finds a literal names it
    for node, what in _code_positions(tree):
        for c in _strings(node):
            if CODE.match(v := c.value):
                found.setdefault((c.lineno, c.col_offset), Spelled(path, c.lineno, v, what))
    skip: set[int] = set()  # docstrings, and literals that key a dict, a column or a field: not codes
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        elif isinstance(node, ast.Call) and _name(node) in ("get", "pop", "setdefault") and node.args:
            skip.add(id(node.args[0]))
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and _string(first.value) is not None:
                skip.add(id(first.value))
    for c in _strings(tree):
        if c.value in reasons and id(c) not in skip:
            found.setdefault((c.lineno, c.col_offset), Spelled(path, c.lineno, c.value, "a reason code"))
    return [found[k] for k in sorted(found)]


def test_the_code_names_its_codes_by_enum_member():
    """Every rejection reason, stage and filter name in ``pipeline`` and ``flows`` is an enum member (the
    registry, pipeline/records.py, is the one place that spells them)."""
    found = [
        lit
        for p in _sources()
        if p != REGISTRY
        for lit in code_literals(ast.parse(p.read_text(encoding="utf-8")), str(p.relative_to(REPO)))
    ]
    assert not found, "write these as Reason / RejectStage / FilterName members:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(
    "source, value",
    [
        ('Failure("empty_span")', "empty_span"),  # a new code not in the enum
        ('raw_rejection(raw, "no_change", "the spans are one", text)', "no_change"),
        ('Rejection(stage="candidate", reason=Reason.empty)', "candidate"),
        ("rules = [('too_long', x > 3)]", "too_long"),
        ('reasons[hit] = "near_duplicate"', "near_duplicate"),
        ('return False, swapped, "judge_tie"', "judge_tie"),
        ('alive = why.step(FilterName.blind, np.where(drop, "blind_balanced", ""), gaps, alive)', "blind_balanced"),
        ('reasons[rows] = np.where(first, "duplicate_published", Reason.exact_duplicate)', "duplicate_published"),
        ('rules = [("too_far", x > 3)]', "too_far"),
        ("def rule(x) -> tuple[bool, Reason]:\n    return False, 'judge_lost'", "judge_lost"),
    ],
)
def test_the_static_check_fails_on_a_literal(source, value):
    """The check above can fail: each of these spells a code as a string."""
    tree = ast.parse(source if not source.startswith("return") else f"def f() -> Reason:\n    {source}\n")
    assert [lit.value for lit in code_literals(tree, "x.py")] == [value]


def test_the_static_check_leaves_keys_and_text_alone():
    source = 'd = {"empty": 1}\nx = d["empty"] + s.get("no_positive")\nFailure(Reason.empty, "the answer is empty")\n'
    assert code_literals(ast.parse(source), "x.py") == []
