"""Retrieval metrics of `contrastgen evaluate` on retrieval datasets: ranks, recall@k and MRR@10 against hand
computations, and the corpus built from a test split (its distinct passages)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.train.evaluate import EvalReport, Retention, RetrievalScore, TypeScore, ranks, retrieval_metrics


def test_ranks_count_the_passages_at_least_as_close_as_the_relevant_one():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    corpus = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    # query 0: relevant 0 (cos 1) first; query 1: relevant 2 (cos 0.6) behind passage 1 (cos 1);
    # query 2: relevant 0 (cos 0.6), behind passage 1 (0.8) and passage 2 (0.96)
    assert ranks(q, corpus, np.array([0, 2, 0])).tolist() == [1, 2, 3]
    assert ranks(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([1])).tolist() == [
        2
    ]  # a tie counts against


def test_recall_and_mrr_by_hand():
    # ranks 1, 3, 12, 2, 10: recall@1 1/5; recall@10 4/5; MRR@10 (1 + 1/3 + 0 + 1/2 + 1/10) / 5 = 0.38667
    assert retrieval_metrics(np.array([1, 3, 12, 2, 10])) == {"recall@1": 20.0, "recall@10": 80.0, "mrr@10": 38.67}
    assert retrieval_metrics(np.array([1, 1])) == {"recall@1": 100.0, "recall@10": 100.0, "mrr@10": 100.0}
    assert retrieval_metrics(np.array([11])) == {"recall@1": 0.0, "recall@10": 0.0, "mrr@10": 0.0}


def test_report_json_has_retrieval_only_for_retrieval_datasets():
    t = TypeScore("all", 1, 100.0, 100.0, 100.0, 0.1)
    plain = EvalReport(t, [t], 0.1, -1.0, Retention(80.0, 90.0, 60), 0)
    assert "retrieval" not in plain.to_dict()  # the other kinds' report is unchanged
    r = EvalReport(t, [t], 0.1, -1.0, Retention(80.0, 90.0, 60), 0, RetrievalScore(50.0, 100.0, 75.0, 4, 6))
    assert r.to_dict()["retrieval"] == {
        "recall@1": 50.0,
        "recall@10": 100.0,
        "mrr@10": 75.0,
        "queries": 4,
        "passages": 6,
    }


@pytest.mark.integration
def test_retrieval_scores_rank_each_query_against_the_splits_passages():
    from sentence_transformers import SentenceTransformer

    from pipeline.config import bundled_encoder
    from pipeline.train.evaluate import retrieval_scores

    moon, bread, violin = (
        "The Moon orbits the Earth every 27 days.",
        "Bread rises because yeast makes gas.",
        "A violin has four strings tuned in fifths.",
    )
    rows = [  # two queries that name their passage's words, one that names another passage's
        {"anchor": "how long is the moon's orbit around the earth", "positive": moon, "negative": bread},
        {"anchor": "how long is the moon's orbit around the earth", "positive": moon, "negative": violin},
        {"anchor": "why does bread rise with yeast", "positive": bread, "negative": moon},
        {"anchor": "strings of a violin tuned in fifths", "positive": moon, "negative": violin},
    ]
    model = SentenceTransformer(str(bundled_encoder()), device="cpu")
    s = retrieval_scores(model, pa.Table.from_pylist(rows))
    assert (s.queries, s.passages) == (3, 3)  # distinct (query, passage) pairs; distinct passages
    assert (s.recall_at_1, s.recall_at_10) == (round(200 / 3, 2), 100.0)  # the third ranks its "positive" below violin
    assert 100 * (1 + 1 + 1 / 3) / 3 - 0.01 <= s.mrr_at_10 < 100 * (1 + 1 + 1 / 2) / 3 + 0.01
