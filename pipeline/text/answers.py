"""Final answers of rationales: extraction per answer kind, gold answers per dataset layout, and the
self-consistency vote (Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning").

Answer kinds: ``number`` (GSM8K, SVAMP: "#### 18", "The answer is 1,250.", "$18.00" all read as ``18`` /
``1250``) and ``choice`` (CommonsenseQA: a letter A-E, or the text of one choice). Answers are compared
after :func:`normalise_answer`, so "18.0" and "18" vote together.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

AnswerKind = Literal["number", "choice"]


def answer_kind_of(setting: Literal["auto", "number", "choice"], choices: tuple[str, ...]) -> AnswerKind:
    """The answer kind of one question: the setting, or under ``auto`` ``choice`` where it has choices."""
    if setting == "auto":
        return "choice" if choices else "number"
    return setting


_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
# Phrases that introduce the final answer, strongest first; the last match in the text wins.
_CUES = (r"####\s*", r"answer\s*(?:is|:)\s*(?:\*\*)?", r"=\s*(?=[^=]*$)")
_REFUSALS = re.compile(
    r"\b(I (?:can ?not|can't|am unable to|won't)|as an AI|I'm sorry|I apologi[sz]e)\b", re.IGNORECASE
)


def normalise_answer(value: str, kind: AnswerKind) -> str | None:
    """Canonical form of an answer for comparison: numbers without $, commas or a zero fraction; letters upper-case.

    >>> normalise_answer("$1,250.00", "number"), normalise_answer("18.5", "number"), normalise_answer(" b ", "choice")
    ('1250', '18.5', 'B')
    """
    value = value.strip().rstrip(".").strip()
    if kind == "choice":
        return value.upper() if re.fullmatch(r"[A-Ea-e]", value) else None
    m = re.fullmatch(r"(-?)\$?\s?([\d,]*\d(?:\.\d+)?)", value)
    if not m:
        return None
    whole, _, frac = m.group(2).replace(",", "").partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    number = whole + ("." + frac if frac else "")
    return number if number == "0" or not m.group(1) else "-" + number


def extract_answer(text: str, kind: AnswerKind, choices: tuple[str, ...] = ()) -> str | None:
    """The final answer a rationale states, normalised; None when it states none.

    Numbers: the number after the last answer cue ("####", "answer is", a final "="), else the last number
    in the text. Choices: the letter after "answer is", else the last "(X)", else the single choice whose
    text the rationale's last sentence names.

    >>> extract_answer("3 + 4 = 7 apples. The answer is 7.", "number")
    '7'
    >>> extract_answer("She has 16 - 3 = 13 eggs, so 13 * 2 = $26", "number")
    '26'
    >>> extract_answer("People go to a bank. So the answer is (A).", "choice", ("bank", "library"))
    'A'
    >>> extract_answer("You would find it in a library.", "choice", ("bank", "library")), extract_answer(
    ...     "No idea", "number"
    ... )
    ('B', None)
    """
    if kind == "choice":
        return _extract_choice(text, choices)
    for cue in _CUES:
        hits = re.findall(cue + f"({_NUMBER})", text, flags=re.IGNORECASE)
        if hits:
            return normalise_answer(hits[-1], kind)
    numbers = re.findall(_NUMBER, text)
    return normalise_answer(numbers[-1], kind) if numbers else None


def _extract_choice(text: str, choices: tuple[str, ...]) -> str | None:
    cued = re.findall(r"answer\s*(?:is|:)\s*\(?([A-Ea-e])\b", text, flags=re.IGNORECASE)
    if cued:
        return cued[-1].upper()
    letters = re.findall(r"\(([A-E])\)", text)  # "(B)"; a bare "A" is too often the article
    if letters:
        return letters[-1]
    last = re.split(r"(?<=[.!?])\s+", text.strip())[-1].lower()
    named = [i for i, c in enumerate(choices) if c and re.search(rf"\b{re.escape(c.lower())}\b", last)]
    return "ABCDE"[named[0]] if len(named) == 1 and named[0] < 5 else None


def gold_answer(value: object, kind: AnswerKind, choices: tuple[str, ...] = ()) -> str | None:
    """The gold answer of an input row, normalised: a bare value (SVAMP's 51.0, CommonsenseQA's "A"), or a
    worked solution whose last line is "#### <answer>" (GSM8K). None when nothing parses.

    >>> gold_answer("It takes 2/2=<<2/2=1>>1 bolt.\\n#### 3", "number"), gold_answer(51.0, "number"), gold_answer(
    ...     "c", "choice"
    ... )
    ('3', '51', 'C')
    """
    if value is None:
        return None
    text = str(value).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    direct = normalise_answer(text, kind)
    if direct is not None:
        return direct
    if kind == "choice" and text.lower() in [c.lower() for c in choices]:
        return "ABCDE"[[c.lower() for c in choices].index(text.lower())]
    return None


def is_refusal(text: str) -> bool:
    """True for a refusal or an apology instead of reasoning.

    >>> is_refusal("I'm sorry, I cannot solve this."), is_refusal("3 + 4 = 7. The answer is 7.")
    (True, False)
    """
    return bool(_REFUSALS.search(text))


def vote(answers: list[str | None]) -> tuple[str | None, dict[str, int]]:
    """Self-consistency: the most common parsed answer (ties: the one seen first) and every answer's count.

    >>> vote(["7", "8", None, "7"])
    ('7', {'7': 2, '8': 1})
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, {}
    top = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == top)
    return winner, dict(counts)
