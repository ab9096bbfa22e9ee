"""Paraphrase detection on word-scrambled pairs: PAWS (Zhang, Baldridge and He, NAACL 2019, "PAWS: Paraphrase
Adversaries from Word Scrambling", arXiv:1904.01130), evaluation only.

Almost every PAWS pair uses the same words, swapped or moved ("flights from New York to Florida" against "flights
from Florida to New York"), so a bag-of-words encoder gives both kinds the same cosine and scores near chance: a
human-labelled test of exactly what swap negatives are meant to teach. The score is the ROC-AUC x 100 of the cosine
of the two sentences as a paraphrase score (the classes are 44/56 in PAWS-Wiki dev, so AUC, not accuracy at an
arbitrary threshold): the chance that a random paraphrase pair scores above a random non-paraphrase pair, ties
counted half (Mann-Whitney U / (n_pos * n_neg)).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sentence_transformers import SentenceTransformer

from pipeline.errors import InputFileError
from pipeline.train.evaluate import encode_unique

HEADER = ["id", "sentence1", "sentence2", "label"]


def read_paws(path: Path, limit: int | None = None) -> list[dict]:
    """Pairs {sentence1, sentence2, label} of a PAWS TSV (header ``id sentence1 sentence2 label``, label 1 =
    paraphrase, 0 = not; CRLF line ends as released). A bad line is an error naming the file, line and field:
    every pair is ranked against every other, so a silently skipped line would change the measure."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            path,
            "expected PAWS's dev.tsv (id, sentence1, sentence2, label), found no such file. "
            "Fix: pass its path (../shared/data/paws/dev.tsv in the project's workspace)",
        )
    pairs: list[dict] = []
    with path.open(encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, 1):
            cols = next(csv.reader([line.rstrip("\r\n")], delimiter="\t", quoting=csv.QUOTE_NONE), [])
            if n == 1:
                if cols != HEADER:
                    raise InputFileError(path, f"expected the header {HEADER}, found {cols[:6]}", n)
                continue
            if not line.strip():
                continue
            if len(cols) != 4:
                raise InputFileError(path, f"expected 4 tab-separated fields, found {len(cols)}", n)
            for name, value in zip(("sentence1", "sentence2"), cols[1:3]):
                if not value.strip():
                    raise InputFileError(path, "expected a non-empty sentence, found an empty one", n, name)
            if cols[3] not in ("0", "1"):
                raise InputFileError(path, f"expected 0 or 1 (1 = paraphrase), found {cols[3]!r}", n, "label")
            pairs.append({"sentence1": cols[1], "sentence2": cols[2], "label": int(cols[3])})
            if limit is not None and len(pairs) == limit:
                break
    if len({p["label"] for p in pairs}) < 2:
        raise InputFileError(
            path,
            f"expected pairs of both labels for a ROC-AUC, found {len(pairs)} pairs of "
            f"{sorted({p['label'] for p in pairs})}",
        )
    return pairs


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for binary ``labels`` (1 = positive), ties counted half: Mann-Whitney U over
    n_pos * n_neg, from average ranks."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"expected both classes for a ROC-AUC, found {n_pos} positive and {n_neg} negative")
    ranks = rankdata(scores)  # average ranks: a tie between a positive and a negative counts half
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paraphrase_auc(model: SentenceTransformer, pairs: list[dict], batch_size: int = 64) -> float:
    """ROC-AUC x 100 (two decimals) of the cosine of each pair as its paraphrase score."""
    emb = encode_unique(model, [p["sentence1"] for p in pairs] + [p["sentence2"] for p in pairs], batch_size)
    sims = np.array([float(emb[p["sentence1"]] @ emb[p["sentence2"]]) for p in pairs])
    return round(100 * auc(sims, np.array([p["label"] for p in pairs])), 2)
