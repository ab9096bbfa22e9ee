"""Built-in evaluation: typed hard-negative accuracy, margin, alignment/uniformity, retention.

On a dataset's held-out test split, for each row (caption c, paraphrase positive p, negative n) with
cosine similarity s:
- ``acc_caption``: s(c, p) > s(c, n), the caption as query;
- ``acc_positive``: s(p, c) > s(p, n), the paraphrase as query (the other direction);
- ``acc``: both hold (what the goals are measured on), as text-only compositionality benchmarks score
  a caption against its own perturbation (SugarCrepe, Hsieh et al. 2023);
- ``margin``: mean of s(c, p) - s(c, n).
Alignment and uniformity follow Wang & Isola 2020 (lower is better for both) on the test captions.
Retention is STS-style: Spearman x 100 between cosine similarity and the graded score of the bundled
``retention_pairs.jsonl`` (120 general-domain pairs written for contrastgen: paraphrase 5, related 2.5,
unrelated 0), plus the mean cosine of its paraphrase pairs; or of a user's STS-format file (``eval.retention``,
``--retention FILE``): STS Benchmark's own TSV (STS-B dev, human-annotated; Cer et al. 2017) or JSONL rows of
sentence1/sentence2/score. Rows without a positive are counted, not scored.

A retrieval dataset (``contrastgen generate retrieval``) is also scored as retrieval (:func:`retrieval_scores`):
every distinct test query against the corpus of distinct test passages (its positives and negatives), ranked by
cosine; ``recall@k`` is the share of queries whose own passage ranks in the top k, ``mrr@10`` the mean of 1/rank
(0 past rank 10), as MS MARCO (Nguyen et al. 2016) reports it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

from pipeline.errors import DatasetError, InputFileError

RETENTION_PAIRS = Path(__file__).with_name("retention_pairs.jsonl")


@dataclass(frozen=True)
class TypeScore:
    neg_type: str
    rows: int
    acc: float
    acc_caption: float
    acc_positive: float
    margin: float


@dataclass(frozen=True)
class Retention:
    spearman: float  # x 100
    paraphrase_sim: float  # x 100
    pairs: int
    source: str = "bundled"  # the bundled pairs, or the STS file's name


@dataclass(frozen=True)
class RetrievalScore:
    recall_at_1: float  # x 100
    recall_at_10: float  # x 100
    mrr_at_10: float  # x 100
    queries: int
    passages: int  # the corpus: distinct test passages

    def to_dict(self) -> dict:
        return {
            "recall@1": self.recall_at_1,
            "recall@10": self.recall_at_10,
            "mrr@10": self.mrr_at_10,
            "queries": self.queries,
            "passages": self.passages,
        }


@dataclass(frozen=True)
class EvalReport:
    overall: TypeScore
    per_type: list[TypeScore]
    alignment: float
    uniformity: float
    retention: Retention
    no_positive: int
    retrieval: RetrievalScore | None = None  # retrieval datasets only

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.retrieval is None:
            del d["retrieval"]
        else:
            d["retrieval"] = self.retrieval.to_dict()
        return d


def encode_unique(model: SentenceTransformer, texts: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    uniq = list(dict.fromkeys(texts))
    emb = model.encode(
        uniq, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return {t: e for t, e in zip(uniq, emb.cpu())}


def read_sts(path: Path) -> list[dict]:
    """Pairs {sentence1, sentence2, score} of an STS-format file: JSONL rows with those fields, or STS Benchmark's
    tab-separated lines (genre, file, years, id, score, sentence1, sentence2, then optional source fields; no
    quoting, as its readme says). A bad line is an error naming the file, line and field: the score ranks
    every pair, so a silently skipped line would change the measure."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            path,
            "expected an STS-format file (STS-B's sts-dev.csv, or JSONL of sentence1/"
            "sentence2/score), found no such file. Fix: pass the file's path to --retention",
        )
    pairs = []
    with path.open(encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputFileError(path, f"expected a JSON object, found invalid JSON ({e.msg})", n) from None
                fields = [row.get("sentence1"), row.get("sentence2"), row.get("score")] if isinstance(row, dict) else []
            else:
                cols = next(csv.reader([line.rstrip("\r\n")], delimiter="\t", quoting=csv.QUOTE_NONE))
                if len(cols) < 7:
                    raise InputFileError(
                        path,
                        f"expected 7 tab-separated fields (genre, file, years, id, score, "
                        f"sentence1, sentence2), found {len(cols)}. Fix: pass STS-B's own file, "
                        "or JSONL rows of sentence1/sentence2/score",
                        n,
                    )
                fields = [cols[5], cols[6], cols[4]]
            pairs.append(_sts_pair(path, n, fields))
    if len(pairs) < 3:
        raise InputFileError(path, f"expected at least 3 scored pairs for a Spearman correlation, found {len(pairs)}")
    return pairs


def _sts_pair(path: Path, n: int, fields: list) -> dict:
    for name, value in zip(("sentence1", "sentence2"), fields[:2]):
        if not isinstance(value, str) or not value.strip():
            raise InputFileError(path, f"expected a non-empty sentence, found {value!r}", n, name)
    try:
        score = float(fields[2])
    except (TypeError, ValueError):
        raise InputFileError(
            path, f"expected a number (the graded similarity), found {fields[2]!r}", n, "score"
        ) from None
    return {"sentence1": fields[0], "sentence2": fields[1], "score": score}


def retention_pairs(part: str = "all", path: Path | None = None) -> list[dict]:
    """The bundled pairs, or an STS-format file's (:func:`read_sts`); ``check`` (even lines) steers early
    stopping, ``report`` (odd lines) is reported, so the reported number is not the one checkpoints were picked on."""
    if path is None:
        rows = [json.loads(line) for line in RETENTION_PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = read_sts(path)
    return {"all": rows, "check": rows[0::2], "report": rows[1::2]}[part]


def retention(
    model: SentenceTransformer, pairs: list[dict], batch_size: int = 64, source: str = "bundled"
) -> Retention:
    emb = encode_unique(model, [p["sentence1"] for p in pairs] + [p["sentence2"] for p in pairs], batch_size)
    sims = np.array([float(emb[p["sentence1"]] @ emb[p["sentence2"]]) for p in pairs])
    gold = np.array([p["score"] for p in pairs])
    para = sims[gold >= 4.5]
    return Retention(
        round(100 * float(spearmanr(sims, gold).statistic), 2),
        round(100 * float(para.mean()), 2) if len(para) else float("nan"),
        len(pairs),
        source,
    )


def _score(name: str, s_cp: np.ndarray, s_cn: np.ndarray, s_pn: np.ndarray) -> TypeScore:
    a_c, a_p = s_cp > s_cn, s_cp > s_pn
    return TypeScore(
        name,
        int(len(s_cp)),
        round(100 * float(np.mean(a_c & a_p)), 2),
        round(100 * float(np.mean(a_c)), 2),
        round(100 * float(np.mean(a_p)), 2),
        round(float(np.mean(s_cp - s_cn)), 4),
    )


def _align_uniform(captions: torch.Tensor, positives: torch.Tensor) -> tuple[float, float]:
    align = (captions - positives).norm(dim=1).pow(2).mean()  # Wang & Isola: E ||f(x) - f(x+)||^2
    uniform = torch.pdist(captions).pow(2).mul(-2).exp().mean().log()  # log E exp(-2 ||f(x) - f(y)||^2)
    return round(float(align), 4), round(float(uniform), 4)


def typed_scores(
    model: SentenceTransformer, scored: list[dict], batch_size: int = 64
) -> tuple[TypeScore, list[TypeScore], torch.Tensor, torch.Tensor]:
    """Typed accuracy of ``model`` on rows {anchor, positive, negative, type} (the training layout), every one with
    a positive: (all rows, each type, the rows' anchor embeddings [R, D], their positive embeddings [R, D])."""
    emb = encode_unique(model, [t for r in scored for t in (r["anchor"], r["positive"], r["negative"])], batch_size)
    c = torch.stack([emb[r["anchor"]] for r in scored])  # [R, D]
    p = torch.stack([emb[r["positive"]] for r in scored])  # [R, D]
    n = torch.stack([emb[r["negative"]] for r in scored])  # [R, D]
    s_cp, s_cn, s_pn = ((c * p).sum(1).numpy(), (c * n).sum(1).numpy(), (p * n).sum(1).numpy())
    types = np.array([r["type"] for r in scored])
    per_type = [_score(t, s_cp[types == t], s_cn[types == t], s_pn[types == t]) for t in sorted(set(types))]
    return _score("all", s_cp, s_cn, s_pn), per_type, c, p


def ranks(queries: np.ndarray, corpus: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q,) the rank (1 = first) of each query's relevant passage ``relevant[q]`` among ``corpus`` [P, D], by dot
    product
    with ``queries`` [Q, D] (unit vectors: cosine); a tie counts against it (rank = passages scoring at least as high).

    >>> ranks(np.eye(2), np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([0, 0])).tolist()
    [1, 2]
    """
    sims = queries @ corpus.T  # [Q, P]
    own = sims[np.arange(len(queries)), relevant]  # (Q,)
    return (sims >= own[:, None]).sum(1)  # the relevant passage itself is one of them


def retrieval_metrics(rank: np.ndarray) -> dict[str, float]:
    """recall@1, recall@10 and MRR@10 (x 100) of the relevant passages' ranks (Q,).

    >>> retrieval_metrics(np.array([1, 2, 11, 4]))
    {'recall@1': 25.0, 'recall@10': 75.0, 'mrr@10': 43.75}
    """
    rank = np.asarray(rank)
    return {
        "recall@1": round(100 * float(np.mean(rank <= 1)), 2),
        "recall@10": round(100 * float(np.mean(rank <= 10)), 2),
        "mrr@10": round(100 * float(np.mean(np.where(rank <= 10, 1.0 / rank, 0.0))), 2),
    }


def retrieval_scores(model: SentenceTransformer, table: pa.Table, batch_size: int = 64) -> RetrievalScore:
    """Retrieval on a test split in the training layout (anchor = query): each distinct (query, passage) against the
    corpus of the split's distinct passages (positives and negatives)."""
    rows = table.select(["anchor", "positive", "negative"]).to_pylist()
    pairs = list(dict.fromkeys((r["anchor"], r["positive"]) for r in rows if r["positive"] is not None))
    if not pairs:
        raise DatasetError(
            "retrieval evaluation: expected test rows with a query and its passage, found none. "
            "Fix: generate from more passages (or a larger output.test_fraction)"
        )
    corpus = list(dict.fromkeys([p for _, p in pairs] + [r["negative"] for r in rows]))
    emb = encode_unique(model, [q for q, _ in pairs] + corpus, batch_size)
    at = {p: i for i, p in enumerate(corpus)}
    rank = ranks(
        torch.stack([emb[q] for q, _ in pairs]).numpy(),
        torch.stack([emb[p] for p in corpus]).numpy(),  # [Q, D], [P, D]
        np.array([at[p] for _, p in pairs]),
    )
    m = retrieval_metrics(rank)
    return RetrievalScore(m["recall@1"], m["recall@10"], m["mrr@10"], len(pairs), len(corpus))


def evaluate_table(
    model: SentenceTransformer,
    table: pa.Table,
    batch_size: int = 64,
    retention_file: Path | None = None,
    retrieval: bool = False,
) -> EvalReport:
    """Score ``model`` on a test split in the training layout; retention on the report half of ``retention_file``
    (an STS-format file) or of the bundled pairs; with ``retrieval`` (a retrieval dataset's split) retrieval too."""
    rows = table.select(["anchor", "positive", "negative", "type"]).to_pylist()
    scored = [r for r in rows if r["positive"] is not None]
    if not scored:
        raise DatasetError(
            f"evaluation: expected rows with a paraphrase positive, found none of {len(rows)}. "
            "Fix: generate with paraphrases on (negatives.paraphrase) or more captions"
        )
    overall, per_type, c, p = typed_scores(model, scored, batch_size)
    uniq = {r["anchor"]: i for i, r in enumerate(scored)}
    idx = list(uniq.values())
    align, uniform = _align_uniform(c[idx], p[idx])
    return EvalReport(
        overall,
        per_type,
        align,
        uniform,
        retention(
            model,
            retention_pairs("report", retention_file),
            batch_size,
            "bundled" if retention_file is None else Path(retention_file).name,
        ),
        len(rows) - len(scored),
        retrieval_scores(model, table, batch_size) if retrieval else None,
    )
