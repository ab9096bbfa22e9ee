"""Rule-based hard negatives from a dependency parse: a "rules" training baseline and a COCO transfer set.

The rules follow NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words,
and what to do about it?", arXiv:2210.01936: swap nouns/adjectives of a caption, replace words by others from
the corpus) under the SugarCrepe type names (Hsieh et al. 2023, arXiv:2306.14610), which are also the names our
LLM generator gives its negatives. They read a spaCy parse (``en_core_web_sm``): noun-chunk head nouns (with their
``compound`` modifiers, so "fire hydrant" moves as one), ``amod`` adjectives, ``prep`` prepositions and verbs.
Replacements keep the Penn tag (a plural replaces a plural, "sitting" is replaced by another VBG), the case of a
sentence-initial word and the a/an agreement; the rest of the caption is rebuilt byte for byte from the tokens.

Pure functions; a rule that does not apply gives ``None`` and, in the batch helpers, a rejected row with a reason.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import ConfigError, InputFileError
from pipeline.text.word_class import load_parser

RULE_TYPES = ("swap_obj", "swap_att", "replace_obj", "replace_att", "replace_rel")
# Nouns that name a quantity, a part or the picture itself, not an object: swapping them makes no hard negative.
NOT_OBJECTS = frozenset(
    {
        "group",
        "couple",
        "pair",
        "lot",
        "bunch",
        "number",
        "variety",
        "kind",
        "type",
        "piece",
        "top",
        "front",
        "side",
        "middle",
        "back",
        "edge",
        "center",
        "view",
        "close",
        "picture",
        "photo",
        "image",
        "photograph",
        "shot",
        "lots",
        "one",
        "ones",
        "other",
        "others",
    }
)
NOT_ATTRIBUTES = frozenset(
    {
        "many",
        "several",
        "few",
        "other",
        "same",
        "different",
        "various",
        "more",
        "most",
        "much",
        "own",
        "such",
        "next",
        "last",
        "first",
        "only",
        "whole",
        "certain",
    }
)  # quantifiers
NOT_RELATIONS = frozenset({"of", "than", "as", "like"})  # partitive/comparative prepositions carry no relation
TOP_K = 100  # replacements come from the most frequent words of their kind (no one-off typos)


@dataclass(frozen=True)
class Vocab:
    """Word counts of a parsed corpus: nouns by Penn tag, ``amod`` adjectives, relations by kind
    ("prep", or the verb's Penn tag)."""

    nouns: dict[str, Counter] = field(default_factory=dict)
    adjectives: Counter = field(default_factory=Counter)
    relations: dict[str, Counter] = field(default_factory=dict)


def _noun_units(doc: Any) -> list[tuple[int, int, str]]:
    """(start, end, tag) of each noun-chunk head noun with the compound nouns right before it."""
    units = []
    for chunk in doc.noun_chunks:
        head = chunk.root
        if head.pos_ != "NOUN" or head.lower_ in NOT_OBJECTS or not head.is_alpha:
            continue
        start = head.i
        while start > chunk.start and doc[start - 1].dep_ == "compound" and doc[start - 1].tag_ == "NN":
            start -= 1
        units.append((start, head.i + 1, head.tag_))
    return units


def _adjectives(doc: Any) -> list[Any]:
    return [t for t in doc if t.dep_ == "amod" and t.pos_ == "ADJ" and t.is_alpha and t.lower_ not in NOT_ATTRIBUTES]


def _relations(doc: Any) -> list[tuple[Any, str]]:
    """(token, kind) of each preposition and verb that can be replaced by another of the same kind."""
    out = []
    for t in doc:
        if (
            t.dep_ == "prep"
            and t.pos_ == "ADP"
            and t.is_alpha
            and t.lower_ not in NOT_RELATIONS
            and t.head.pos_ in ("NOUN", "PROPN", "VERB", "AUX", "PRON")
            and not any(c.dep_ == "pobj" and c.lower_ in NOT_OBJECTS for c in t.children)
        ):
            out.append((t, "prep"))  # skips "next to", "in front of", "on top of": no single-word swap fits them
        elif t.pos_ == "VERB" and t.dep_ not in ("amod", "compound") and t.is_alpha:
            out.append((t, t.tag_))
    return out


def _text(doc: Any, start: int, end: int) -> str:
    return doc[start:end].text.lower()


def build_vocab(docs: Iterable[Any]) -> Vocab:
    """Counts of the nouns, adjectives and relations the rules can use, from parsed captions."""
    vocab = Vocab()
    for doc in docs:
        for start, end, tag in _noun_units(doc):
            vocab.nouns.setdefault(tag, Counter())[_text(doc, start, end)] += 1
        vocab.adjectives.update(t.lower_ for t in _adjectives(doc))
        for t, kind in _relations(doc):
            vocab.relations.setdefault(kind, Counter())[t.lower_] += 1
    return vocab


def _pick(counts: Counter | None, avoid: set[str], rng: random.Random) -> str | None:
    """A frequent word of ``counts`` not in ``avoid`` (deterministic order, then ``rng``)."""
    choices = [
        w for w, _ in sorted((counts or Counter()).items(), key=lambda wc: (-wc[1], wc[0]))[:TOP_K] if w not in avoid
    ]
    return rng.choice(choices) if choices else None


def _rebuild(doc: Any, edits: dict[int, tuple[int, str]]) -> str:
    """The caption with tokens ``start:end`` replaced by text (``{start: (end, text)}``), keeping all whitespace,
    the capital of a sentence-initial word and the a/an before each edit."""
    edits = dict(edits)
    for start, (end, new) in list(edits.items()):
        if (start == 0 or doc[start].is_sent_start) and doc[start].text[:1].isupper() and not doc[start].text.isupper():
            edits[start] = (end, new[:1].upper() + new[1:])
        before = doc[start - 1] if start > 0 else None
        if before is not None and before.lower_ in ("a", "an") and before.i not in edits:
            article = "an" if new[:1].lower() in "aeiou" else "a"
            edits[before.i] = (start, article.capitalize() if before.text[:1].isupper() else article)
    out, i = [], 0
    while i < len(doc):
        if i in edits:
            end, new = edits[i]
            out.append(new + doc[end - 1].whitespace_)
            i = end
        else:
            out.append(doc[i].text_with_ws)
            i += 1
    return "".join(out)


def rule_negative(doc: Any, neg_type: str, vocab: Vocab, rng: random.Random) -> str | None:
    """One ``neg_type`` negative of the parsed caption ``doc``, or None when the rule does not apply (or would
    give the caption back). Deterministic given the state of ``rng``."""
    edits: dict[int, tuple[int, str]] = {}
    units = _noun_units(doc)
    if neg_type == "swap_obj":  # two different nouns of the same tag trade places
        pairs = [
            (a, b)
            for k, a in enumerate(units)
            for b in units[k + 1 :]
            if a[2] == b[2] and _text(doc, *a[:2]) != _text(doc, *b[:2])
        ]
        if pairs:
            a, b = rng.choice(pairs)
            edits = {a[0]: (a[1], _text(doc, *b[:2])), b[0]: (b[1], _text(doc, *a[:2]))}
    elif neg_type == "swap_att":  # adjectives of two different nouns trade places
        adjs = [t for t in _adjectives(doc) if t.head.pos_ == "NOUN"]
        adj_pairs = [
            (a, b) for k, a in enumerate(adjs) for b in adjs[k + 1 :] if a.head.i != b.head.i and a.lower_ != b.lower_
        ]
        if adj_pairs:
            x, y = rng.choice(adj_pairs)
            edits = {x.i: (x.i + 1, y.lower_), y.i: (y.i + 1, x.lower_)}
    elif neg_type == "replace_obj":
        if units:
            start, end, tag = rng.choice(units)
            new = _pick(vocab.nouns.get(tag), {_text(doc, s, e) for s, e, _ in units}, rng)
            edits = {start: (end, new)} if new else {}
    elif neg_type == "replace_att":
        adjs = _adjectives(doc)
        if adjs:
            adj = rng.choice(adjs)
            new = _pick(vocab.adjectives, {t.lower_ for t in adjs}, rng)
            edits = {adj.i: (adj.i + 1, new)} if new else {}
    elif neg_type == "replace_rel":
        rels = _relations(doc)
        if rels:
            tok, kind = rng.choice(rels)
            new = _pick(vocab.relations.get(kind), {t.lower_ for t, k in rels if k == kind}, rng)
            edits = {tok.i: (tok.i + 1, new)} if new else {}
    else:
        raise ConfigError(f"unknown rule negative type {neg_type!r}; expected one of {list(RULE_TYPES)}")
    if not edits:
        return None
    text = _rebuild(doc, edits)
    return None if text.strip().lower() == doc.text.strip().lower() else text


def _rng(seed: int, neg_type: str, text: str) -> random.Random:
    """A generator for one (caption, type): the result does not depend on which other captions are in the batch."""
    return random.Random(f"{seed}\x00{neg_type}\x00{text}")


def rule_negatives(
    texts: list[str], vocab: Vocab | None = None, seed: int = 0, types: tuple[str, ...] = RULE_TYPES
) -> list[dict]:
    """Rows ``{"caption", "negative", "neg_type", "reason"}``, one per (text, type): ``reason`` is None when the
    rule applied, ``"rule_not_applicable"`` (and ``negative`` None) when it did not. Without ``vocab``, the
    replacement words come from ``texts`` themselves."""
    docs = list(load_parser().pipe(texts, batch_size=256))
    vocab = vocab if vocab is not None else build_vocab(docs)
    rows = []
    for text, doc in zip(texts, docs):
        for neg_type in types:
            negative = rule_negative(doc, neg_type, vocab, _rng(seed, neg_type, text))
            rows.append(
                {
                    "caption": text,
                    "negative": negative,
                    "neg_type": neg_type,
                    "reason": None if negative is not None else "rule_not_applicable",
                }
            )
    return rows


def read_coco(path: Path) -> list[tuple[str, list[str]]]:
    """(file_name, object captions) of each line of an HL/COCO captions JSONL file; a clear error otherwise."""
    fix = 'Fix: give a JSONL file with one {"file_name": str, "captions": {"object": [str, ...]}} per line.'
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputFileError(path, f"expected a JSON object, found invalid JSON ({e.msg}). {fix}", n) from e
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                found = type(row.get("file_name")).__name__ if isinstance(row, dict) else type(row).__name__
                raise InputFileError(path, f"expected a string file_name, found {found}. {fix}", n, "file_name")
            caps = row.get("captions")
            caps = caps.get("object") if isinstance(caps, dict) else caps
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise InputFileError(
                    path, f"expected a list of strings, found {caps!r:.80}. {fix}", n, "captions.object"
                )
            out.append((row["file_name"], [c.strip() for c in caps]))
    return out


def coco_grouped_rows(path: str | Path, skip_images: int = 0, images: int | None = None) -> list[dict]:
    """The flat, grouped form of an HL/COCO captions file (one JSON object per image): one row ``{"id", "caption",
    "group", "image"}`` per distinct object caption (case-insensitive) of each image after the first
    ``skip_images`` (the transfer set's: :func:`coco_transfer_set` takes the first images), ``images`` images at
    most. ``group`` is the image's file name: ``input.group_column: group`` makes its captions positives of each
    other."""
    rows = []
    for name, caps in read_coco(Path(path))[skip_images:][:images]:
        seen: set[str] = set()
        for i, caption in enumerate(c for c in caps if c):
            if caption.lower() not in seen:
                seen.add(caption.lower())
                rows.append({"id": f"{Path(name).stem}-{i}", "caption": caption, "group": name, "image": name})
    return rows


def coco_transfer_set(
    path: str | Path, images: int = 500, exclude: frozenset[str] = frozenset(), seed: int = 0
) -> list[dict]:
    """Rows ``{"image", "anchor", "positive", "negative", "neg_type"}`` for the first ``images`` images of
    ``path`` not in ``exclude``: anchor = the first object caption, positive = the next different one, one row per
    rule type that applies to the anchor. Replacement words come from all the object captions of the file.
    Images without two different captions are skipped."""
    path = Path(path)
    entries = read_coco(path)
    captions = sorted({c for _, caps in entries for c in caps if c})
    docs = dict(zip(captions, load_parser().pipe(captions, batch_size=256)))
    vocab = build_vocab(docs.values())
    rows, used = [], 0
    for name, caps in entries:
        if used >= images:
            break
        caps = [c for c in caps if c]
        if name in exclude or not caps:
            continue
        anchor = caps[0]
        positive = next((c for c in caps[1:] if c.lower() != anchor.lower()), None)
        if positive is None:
            continue
        used += 1
        for neg_type in RULE_TYPES:
            negative = rule_negative(docs[anchor], neg_type, vocab, _rng(seed, neg_type, anchor))
            if negative is not None:
                rows.append(
                    {"image": name, "anchor": anchor, "positive": positive, "negative": negative, "neg_type": neg_type}
                )
    return rows
