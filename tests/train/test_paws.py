"""PAWS-Wiki dev as a benchmark no one here wrote (issue 32): the reader, its errors, the AUC, and the bundled
encoder scored on the real file's first pairs."""

from __future__ import annotations

import numpy as np
import pytest

from bench.outside.paws import auc, paraphrase_auc, read_paws
from pipeline.errors import InputFileError
from tests.conftest import SHARED

PAWS = SHARED / "paws" / "dev.tsv"
LINES = [
    "id\tsentence1\tsentence2\tlabel",
    "1\tFlights from New York to Florida .\tFlights from Florida to New York .\t0",
    "2\tThey were there to enjoy us .\tThey were there for us to enjoy .\t1",
    "3\tThe cat sat on the mat .\tOn the mat sat the cat .\t1",
]


def test_read_paws_reads_the_released_file_with_its_crlf_line_ends():
    pairs = read_paws(PAWS)
    assert len(pairs) == 8000 and sum(p["label"] for p in pairs) == 3539  # SOURCE.md: 3,539 paraphrases
    assert all(not p["sentence2"].endswith("\r") for p in pairs)
    assert pairs[1] == {
        "sentence1": "They were there to enjoy us and they were there to pray for us .",
        "sentence2": "They were there for us to enjoy and they were there for us to pray .",
        "label": 1,
    }
    assert read_paws(PAWS, limit=10) == pairs[:10]


@pytest.mark.parametrize(
    "bad, line, field",
    [
        ("4\tA dog runs .\tA dog is running .", 5, None),
        ("4\tA dog runs .\tA dog is running .\tyes", 5, "label"),
        ("4\t \tA dog is running .\t1", 5, "sentence1"),
    ],
)
def test_a_bad_paws_line_names_file_line_and_field(tmp_path, bad, line, field):
    f = tmp_path / "dev.tsv"
    f.write_text("\r\n".join(LINES + [bad]) + "\r\n")
    with pytest.raises(InputFileError) as exc:
        read_paws(f)
    assert (exc.value.line, exc.value.field) == (line, field) and str(f) in str(exc.value)
    assert "expected" in str(exc.value)


def test_a_file_without_the_header_or_one_label_only_is_refused(tmp_path):
    f = tmp_path / "dev.tsv"
    f.write_text("\n".join(LINES[1:]) + "\n")
    with pytest.raises(InputFileError, match="expected the header"):
        read_paws(f)
    f.write_text("\n".join(LINES[:1] + LINES[2:]) + "\n")
    with pytest.raises(InputFileError, match="both labels"):
        read_paws(f)


def test_auc_counts_ties_half_and_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc(scores, labels) == pytest.approx(pairwise)
    assert auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0 and auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_the_bundled_encoder_scores_the_word_scrambled_pairs_in_its_known_band():
    """What PAWS is for: MiniLM's cosine separates paraphrases from scrambles of the same words only weakly (63.68
    on these 400 pairs, 63.15 on all 8,000; 50 is chance), so the trained encoders have room to show a change."""
    from sentence_transformers import SentenceTransformer

    from pipeline.train.config import bundled_encoder

    score = paraphrase_auc(SentenceTransformer(str(bundled_encoder()), device="cpu"), read_paws(PAWS, limit=400))
    assert 60 < score < 67, score
