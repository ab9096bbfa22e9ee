"""The word-class check on the real spaCy parse: an edit must change the kind of word its type names."""

from __future__ import annotations

import pytest

from pipeline.text.word_class import parse_captions, word_class_failure

BOY = "A boy in a blue shirt holds a red kite."
CAR = "A red car parked by a tree."
CASES = [  # (type, caption, candidate, passes)
    ("swap_att", BOY, "A blue in a boy shirt holds a red kite.", False),  # nouns moved: SmolLM2's usual answer
    ("swap_att", BOY, "A boy in a red shirt holds a blue kite.", True),
    ("swap_att", "A white cat on a black couch.", "A black cat on a white couch.", True),
    ("swap_obj", "A man riding a horse on a beach.", "A horse riding a man on a beach.", True),
    ("swap_obj", BOY, "A blue in a boy shirt holds a red kite.", False),
    ("replace_att", CAR, "A blue car parked by a tree.", True),
    ("replace_att", CAR, "A red truck parked by a tree.", False),
    ("replace_att", "A brick wall behind a bench.", "A wooden wall behind a bench.", True),  # compound: material
    ("replace_obj", CAR, "A red car parked by a house.", True),
    ("replace_obj", CAR, "A blue car parked by a tree.", False),
    ("replace_rel", CAR, "A red car parked under a tree.", True),
    ("replace_rel", CAR, "A red car parked by a house.", False),
    ("reshuffle_order", CAR, "By a tree a red car parked.", True),  # not a checked type
]


@pytest.fixture(scope="module")
def docs():
    return parse_captions([c for _, c, _, _ in CASES])


@pytest.mark.parametrize("neg_type, caption, candidate, passes", CASES)
def test_edit_must_change_the_word_class_its_type_names(docs, neg_type, caption, candidate, passes):
    why = word_class_failure(neg_type, docs[caption], candidate)
    assert (why == "") == passes, why


def test_reason_names_the_changed_words(docs):
    why = word_class_failure("swap_att", docs[BOY], "A blue in a boy shirt holds a red kite.")
    assert "boy" in why and "swap_att changes attributes" in why
