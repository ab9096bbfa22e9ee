"""Parse a model's answer strictly and turn it into a candidate sentence, or a reason why not.

Edit answers are ``A <-> B`` (swap two spans) or ``OLD -> NEW`` (replace a span; an *add* is a
replace whose NEW keeps OLD); code applies them, which small models follow far better than free
rewriting (bench/yields.py measures both). Rewrite answers are the whole sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.records import Reason

_REFUSAL = re.compile(r"^\W*(i'?m sorry|sorry|i cannot|i can'?t|i am unable|i'?m unable|as an ai|i won'?t)\b", re.I)
_CHATTER = re.compile(
    r"^\W*(sure|okay|ok|certainly|of course|here is|here's|here are|the (new|edited|negative|rewritten) "
    r"(caption|sentence)|new caption|answer|caption|output|negative)\b[:,!.]?",
    re.I,
)
_SWAP = re.compile(r"^(.+?)\s*<->\s*(.+)$")
_REPLACE = re.compile(r"^(.+?)\s*->\s*(.+)$")
_QUOTES = "\"'`“”‘’"


@dataclass(frozen=True)
class Candidate:
    text: str  # the resulting sentence
    edit: str  # the edit as the model stated it ("" for rewrites)


@dataclass(frozen=True)
class Failure:
    reason: Reason
    detail: str = ""


_ARTICLE = re.compile(r"\b([Aa]n?)(\s+)([A-Za-z])")


def fix_articles(text: str) -> str:
    """Make a/an agree with the next word after an edit moved words around ("an branch" -> "a branch").

    A spelling heuristic (vowel letter), which is what a caption edit needs; the structural check
    treats a/an as one word, so this never changes a negative's shape.
    """

    def repl(m: re.Match) -> str:
        want = "an" if m.group(3).lower() in "aeiou" else "a"
        art = want.capitalize() if m.group(1)[0].isupper() else want
        return art + m.group(2) + m.group(3)

    return _ARTICLE.sub(repl, text)


def _clean(span: str) -> str:
    return span.strip().strip(_QUOTES).strip().rstrip(".").strip()


def screen(text: str, finish_reason: str = "stop") -> str | Failure:
    """Checks shared by every format: empty, refusal, chatter, multi-line, truncated."""
    stripped = text.strip()
    if not stripped:
        return Failure(Reason.empty)
    if _REFUSAL.match(stripped):
        return Failure(Reason.refusal, stripped[:80])
    lines = [ln for ln in stripped.splitlines() if ln.strip()]
    if len(lines) > 1:
        return Failure(Reason.multi_line, f"{len(lines)} lines")
    if finish_reason == "newline":  # the engine stopped it as it began a second line
        return Failure(Reason.multi_line, "continued past one line")
    if finish_reason == "length":
        return Failure(Reason.truncated, "hit max_tokens")
    if _CHATTER.match(stripped):
        return Failure(Reason.chatter, stripped[:80])
    return stripped


def _find(caption: str, span: str) -> re.Match | None:
    return re.search(r"(?<!\w)" + re.escape(span) + r"(?!\w)", caption, re.I)


def _match_case(original: str, new_text: str) -> str:
    if original[:1].isupper() and new_text[:1].islower():
        return new_text[:1].upper() + new_text[1:]
    return new_text


def apply_swap(caption: str, a: str, b: str) -> str | Failure:
    if a.lower() == b.lower():
        return Failure(Reason.no_change, "both spans are the same")
    ma, mb = _find(caption, a), _find(caption, b)
    if ma is None or mb is None:
        return Failure(Reason.span_not_found, a if ma is None else b)
    if ma.start() > mb.start():
        ma, mb = mb, ma
    if ma.end() > mb.start():
        return Failure(Reason.no_change, "spans overlap")
    first, second = ma.group(0), mb.group(0)
    if ma.start() == 0 and first[:1].isupper():
        # The sentence-initial span moves inside the sentence; its capital was positional.
        first, second = first[:1].lower() + first[1:], _match_case(first, second)
    return caption[: ma.start()] + second + caption[ma.end() : mb.start()] + first + caption[mb.end() :]


def apply_replace(caption: str, old: str, new: str) -> str | Failure:
    if old.lower() == new.lower():
        return Failure(Reason.no_change, "OLD equals NEW")
    m = _find(caption, old)
    if m is None:
        return Failure(Reason.span_not_found, old)
    if m.start() == 0 and m.group(0)[:1].isupper():
        new = _match_case(m.group(0), new)
    return caption[: m.start()] + new + caption[m.end() :]


def parse_answer(caption: str, text: str, edit_format: str, finish_reason: str = "stop") -> Candidate | Failure:
    """Strictly parse one completion for one caption into a candidate sentence."""
    line = screen(text, finish_reason)
    if isinstance(line, Failure):
        return line
    if edit_format == "rewrite":
        sentence = _clean(line) + ("." if line.rstrip().endswith(".") else "")
        if not sentence.strip("."):
            return Failure(Reason.empty)
        return Candidate(sentence, "")
    pattern = _SWAP if edit_format == "swap" else _REPLACE
    m = pattern.match(line)
    if m is None or (edit_format == "replace" and "<->" in line):
        return Failure(Reason.unparsable, f"expected {'A <-> B' if edit_format == 'swap' else 'OLD -> NEW'}")
    a, b = _clean(m.group(1)), _clean(m.group(2))
    if not a or not b:
        return Failure(Reason.unparsable, "empty span")
    result = apply_swap(caption, a, b) if edit_format == "swap" else apply_replace(caption, a, b)
    if isinstance(result, Failure):
        return result
    sep = " <-> " if edit_format == "swap" else " -> "
    return Candidate(fix_articles(result), f"{a}{sep}{b}")
