"""The per-block half of the filter stage: everything about a row that its own block of sources decides.

A finalize at scale sees its rows a block of sources at a time (:mod:`pipeline.run.generate`); this module turns
one block's :class:`~pipeline.filters.stage.Pairs` into :class:`Scored` columns, numbers only (a few tens of
bytes a row): surface and semantic scores, the positive of each group, the exact-dedup key, the near-duplicate
score within the group, the blind gaps and the propensity features. They are spilled to Arrow
(:mod:`pipeline.filters.spill`), and :func:`pipeline.filters.stage.decide` makes the global decisions (exact
dedup across blocks, blind balancing, the propensity fit) out of core over them, so no text of another block
is held, and no column of every row either.

Groups (a caption, a question) never span blocks, so the within-group rules (near dedup, the positive's
band) are exact per block. Two things are block-local by design: the word-bigram blind proxy is fitted on the
block's anchors (cross-fitted within it; a block holds thousands of anchors), and the LM scores only rows alive
after the block's own rules (an exact duplicate of another block's row may still be scored once).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from pipeline.filters.blind import bigram_logprob
from pipeline.filters.config import FilterName
from pipeline.filters.dedup import near_duplicate_scores, normalise_all, repeated
from pipeline.filters.propensity import surface_features
from pipeline.filters.semantic import cosine_rows, semantic_reasons
from pipeline.filters.surface import in_band, surface_scores, surface_similarity
from pipeline.filters.words import Words
from pipeline.records import Reason

if TYPE_CHECKING:
    from pipeline.filters.config import FilterConfig

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: pair key = hash(anchor) * _MIX ^ hash(negative)


class Scorers(Protocol):
    def embed_rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...  # [M, D] unit vectors, (N,) rows
    def lm(self, texts: list[str]) -> np.ndarray: ...  # (N,) mean token log-prob
    def forget(self) -> None: ...  # drop what is held for the texts scored so far (a block is done)


@dataclass(frozen=True)
class Pairs:
    """One row per (anchor, negative); ``positives[i]`` is the anchor's positive or None; ``groups`` ties the
    rows of one anchor; ``strata`` is the negative type (blind balancing is per stratum); ``splits`` is the
    split each row will be written to (blind balancing applies to the configured splits)."""

    ids: list[str]
    anchors: list[str]
    positives: list[str | None]
    negatives: list[str]
    groups: list[str]
    strata: list[str]
    splits: list[str]
    pinned: int = 0  # the first ``pinned`` rows are published already: never dropped; a duplicate of one is rejected
    alternatives: list[tuple[str, ...]] | None = None  # per row: the anchor's other positive candidates, best first


@dataclass(frozen=True)
class Drop:
    filter: FilterName
    reason: Reason
    score: float
    detail: str = ""


def _shared(values: list[str]) -> np.ndarray:
    """``values`` as an object array whose equal strings are one object (a few distinct values, 8 bytes a row)."""
    codes, uniq = pd.factorize(np.asarray(values, dtype=object))
    return np.asarray(uniq, dtype=object)[codes] if len(values) else np.zeros(0, dtype=object)


@dataclass
class Scored:
    """One block's filter columns. N rows, G groups with a positive."""

    ids: np.ndarray  # (N,) bytes: row ids (blind balancing ranks by them; a published duplicate is named by one)
    strata: np.ndarray  # (N,) object: the row's type
    splits: np.ndarray  # (N,) object: the split the row goes to
    pinned: np.ndarray  # (N,) bool: published already
    surface_sim: np.ndarray  # (N,) f32 rapidfuzz ratio anchor vs negative (the column)
    band: np.ndarray  # (N,) f32 the configured surface scorer's score (the band's input)
    semantic_sim: np.ndarray  # (N,) f32 cosine anchor vs negative
    pos_of_row: np.ndarray  # (N,) i64 the row's group among the G positives, -1 when none
    dup_key: np.ndarray  # (N,) u64 hash of the normalised (anchor, negative)
    near: np.ndarray  # (N,) f32 highest ratio to an earlier negative of the group (0: not a near duplicate)
    gaps: np.ndarray  # (N, S) f64 blind gaps, NaN where not scored
    feats: np.ndarray  # (N, 4) f32 surface features of (anchor, negative) for the propensity fit
    pos_groups: list[str]  # (G,) group names, by name within a block
    pos_ratio: np.ndarray  # (G,) f32 ratio anchor vs positive
    pos_cos: np.ndarray  # (G,) f32 cosine anchor vs positive
    pos_kept: np.ndarray  # (G,) bool
    pos_feats: np.ndarray  # (G, 4) f32
    positive_drops: dict[str, Drop] = field(default_factory=dict)  # group -> why its positive was dropped
    pos_choice: np.ndarray | None = None  # (G,) i64 the candidate kept (0: the positive, k: its k-th alternative)

    @property
    def n(self) -> int:
        return len(self.ids)

    def row_cos(self) -> np.ndarray:
        """(N,) cosine of each row's kept positive; NaN where there is none."""
        g = self.pos_of_row
        if not len(self.pos_kept):
            return np.full(len(g), np.nan)
        has = (g >= 0) & self.pos_kept[np.maximum(g, 0)]
        return np.where(has, self.pos_cos[np.maximum(g, 0)], np.nan)


class _Texts:
    """Every distinct text of the pairs (``texts``, in first-seen order), the number of each row's anchor,
    negative and positive (-1: none) among them; embedded once."""

    def __init__(self, p: Pairs, scorers: Scorers):
        self.scorers = scorers
        n, has_pos = len(p.ids), np.array([x is not None for x in p.positives], dtype=bool)
        alts = sorted({a for row in p.alternatives or () for a in row})  # positive candidates (few rows have any)
        every = np.array([*p.anchors, *p.negatives, *(x for x in p.positives if x is not None), *alts], dtype=object)
        codes, uniq = pd.factorize(every)  # one number per distinct text, one hash lookup per text
        self.texts: list[str] = uniq.tolist()
        self.code = dict(zip(self.texts, range(len(self.texts)))) if alts else {}  # text -> number, for candidates
        self.anchor, self.negative = codes[:n], codes[n : 2 * n]  # (N,), (N,)
        self.positive = np.full(n, -1, dtype=np.int64)  # (N,)
        self.positive[has_pos] = codes[2 * n : 2 * n + int(has_pos.sum())]
        # (M, D) embeddings and (U,) the row of each distinct text in them
        self.matrix: np.ndarray  # (M, D)
        self.emb_row: np.ndarray  # (U,)
        self.matrix, self.emb_row = (
            scorers.embed_rows(self.texts) if self.texts else (np.zeros((0, 1), np.float32), np.zeros(0, np.int64))
        )

    @functools.cached_property
    def words(self) -> Words:
        """Every distinct text split into words once, for the word-level scorer and the bigram proxy."""
        return Words(self.texts)

    def cos(self, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Row-wise cosine of the texts at rows ``a`` and ``b``; shape (len(a),). Chunked: gathered rows stay in
        cache."""
        out = np.zeros(len(a), dtype=np.float32)
        ea, eb = self.emb_row[a], self.emb_row[b]
        for i in range(0, len(a), chunk):
            out[i : i + chunk] = cosine_rows(self.matrix[ea[i : i + chunk]], self.matrix[eb[i : i + chunk]])
        return out

    def lm_gap(self, alive: np.ndarray) -> np.ndarray:
        """(N,) LM score of each alive row's anchor minus that of its negative; NaN for rows already dropped
        (the LM, the costly scorer, only sees texts that can still be kept)."""
        used = np.unique(np.concatenate([self.anchor[alive], self.negative[alive]]))
        score = np.full(len(self.texts), np.nan, dtype=np.float64)
        if used.size:  # no row alive (an empty input): the LM is not even loaded
            score[used] = self.scorers.lm([self.texts[i] for i in used.tolist()])
        return score[self.anchor] - score[self.negative]


def score(p: Pairs, cfg: FilterConfig, scorers: Scorers) -> Scored:
    """The filter columns of one block of pairs (see the module docstring)."""
    n = len(p.ids)
    texts = _Texts(p, scorers)
    surface_sim = surface_similarity(p.anchors, p.negatives)  # (N,) the column
    band = surface_sim if cfg.surface.scorer == "ratio" else surface_scores(p.anchors, p.negatives, cfg.surface.scorer)
    semantic_sim = texts.cos(texts.anchor, texts.negative)  # (N,)
    pos = _positives(p, cfg, texts)
    norm = normalise_all(texts.texts)  # (U,) each distinct text once
    h = pd.util.hash_array(np.asarray(norm, dtype=object)) if norm else np.zeros(0, np.uint64)  # (U,) fixed-key siphash
    dup_key = h[texts.anchor] * _MIX ^ h[texts.negative]  # (N,) the (anchor, negative) pair
    local_dup = repeated(dup_key)
    near = np.zeros(n, dtype=np.float32)
    if cfg.dedup.enabled and cfg.dedup.near_threshold is not None:
        idx = np.flatnonzero(~local_dup)
        near[idx] = near_duplicate_scores([norm[i] for i in texts.negative[idx].tolist()], [p.groups[i] for i in idx])
    pinned = np.arange(n) < p.pinned
    sc = Scored(
        ids=np.asarray([i.encode() for i in p.ids], dtype="S") if n else np.zeros(0, "S1"),
        strata=_shared(p.strata),
        splits=_shared(p.splits),
        pinned=pinned,
        surface_sim=surface_sim.astype(np.float32),
        band=np.asarray(band, np.float32),
        semantic_sim=semantic_sim,
        pos_of_row=pos.of_row,
        dup_key=dup_key,
        near=near,
        gaps=np.zeros((n, 0)),
        feats=np.zeros((n, 4), np.float32),
        pos_groups=pos.groups,
        pos_ratio=pos.ratio.astype(np.float32),
        pos_cos=pos.cos.astype(np.float32),
        pos_kept=pos.kept,
        pos_feats=np.zeros((len(pos.groups), 4), np.float32),
        positive_drops=pos.drops,
        pos_choice=pos.choice,
    )
    alive = pinned | _locally_alive(sc, cfg, local_dup)
    sc.gaps = _blind_gaps(p, cfg, texts, alive)
    if cfg.propensity.enabled:
        sc.feats = surface_features(p.anchors, p.negatives, surface_sim, texts.words)
        sc.pos_feats = (
            surface_features(pos.anchors, pos.positives, pos.ratio, texts.words) if pos.groups else sc.pos_feats
        )
    return sc


def _locally_alive(sc: Scored, cfg: FilterConfig, local_dup: np.ndarray) -> np.ndarray:
    """(N,) rows the block's own rules keep (dedup within the block, surface band, semantic rules): the rows the
    LM scores. The global decision may still drop some (an exact duplicate in another block)."""
    alive = np.ones(sc.n, dtype=bool)
    if cfg.dedup.enabled:
        alive &= ~local_dup
        if cfg.dedup.near_threshold is not None:
            alive &= sc.near < cfg.dedup.near_threshold
    if cfg.surface.enabled:
        alive &= in_band(sc.band, cfg.surface.negative.low, cfg.surface.negative.high)
    if cfg.semantic.enabled:
        alive &= semantic_reasons_of(sc, cfg) == ""
    return alive


def semantic_reasons_of(sc: Scored, cfg: FilterConfig) -> np.ndarray:
    """(N,) the semantic rule each row fails ("" when none)."""
    s = cfg.semantic
    guard = (
        None
        if s.false_negative is None
        else np.where(  # (N,) exempt types never count as false negatives
            np.isin(sc.strata.astype(str), s.false_negative_exempt), np.inf, s.false_negative
        )
    )
    return semantic_reasons(
        sc.semantic_sim,
        sc.row_cos(),
        false_negative=guard,
        max_score=s.max_score,
        min_score=s.min_score,
        absolute_margin=s.absolute_margin,
        relative_margin=s.relative_margin,
    )


def _blind_gaps(p: Pairs, cfg: FilterConfig, texts: _Texts, alive: np.ndarray) -> np.ndarray:
    """(N, S) score(anchor) - score(negative) for each configured blind scorer (the LM's: alive rows only)."""
    if not cfg.blind.enabled:
        return np.zeros((len(p.ids), 0))
    cols = []
    for s in cfg.blind.scorers:
        if s.value == "lm_loglik":
            cols.append(texts.lm_gap(alive))
        else:
            a, b = bigram_logprob(p.anchors, p.negatives, p.groups, words=texts.words)
            cols.append(a - b)
    return np.column_stack(cols).astype(np.float64) if cols else np.zeros((len(p.ids), 0))


@dataclass
class _Positives:
    """The positive of each group that has one (G groups, sorted by name): its texts, scores, and whether it
    survived; ``of_row`` (N,) is each row's group among them (-1: the row's group has no positive)."""

    groups: list[str]
    anchors: list[str]
    positives: list[str]
    ratio: np.ndarray  # (G,) fuzz.ratio anchor vs positive, as the surface_sim column
    cos: np.ndarray  # (G,)
    kept: np.ndarray  # (G,) bool
    of_row: np.ndarray  # (N,)
    drops: dict
    choice: np.ndarray  # (G,) the candidate kept: 0 the row's positive, k its k-th alternative


def _positives(p: Pairs, cfg: FilterConfig, texts: _Texts) -> _Positives:
    """Positive of each group, its scores, and the drops of positives that fail the surface band or lose meaning."""
    gid, names = pd.factorize(np.asarray(p.groups, dtype=object))  # (N,) group number
    with_pos = np.flatnonzero(texts.positive >= 0)
    has, at = np.unique(gid[with_pos], return_index=True)  # groups with a positive; where each first has one
    first = np.full(len(names), -1, dtype=np.int64)
    first[has] = with_pos[at]  # (number of groups,) each group's first row with a positive
    order = has[np.argsort(names[has], kind="stable")]  # groups with a positive, by name
    rows, groups = first[order], names[order].tolist()
    anchors, positives = [p.anchors[i] for i in rows.tolist()], [p.positives[i] for i in rows.tolist()]
    choice, pos_codes = np.zeros(len(groups), dtype=np.int64), texts.positive[rows]
    if p.alternatives and any(p.alternatives[i] for i in rows.tolist()):
        cands = [(pos, *p.alternatives[i]) for pos, i in zip(positives, rows.tolist())]
        choice = _choose(anchors, cands, rows, cfg, texts)
        positives = [c[k] for c, k in zip(cands, choice.tolist())]
        pos_codes = np.array([texts.code[x] for x in positives], dtype=np.int64)
    surf = surface_scores(anchors, positives, cfg.surface.scorer)  # (G,)
    sem = texts.cos(texts.anchor[rows], pos_codes)  # (G,)
    reasons = np.full(len(groups), "", dtype=object)
    if cfg.surface.enabled:
        reasons[~in_band(surf, cfg.surface.positive.low, cfg.surface.positive.high)] = Reason.positive_out_of_band
    if cfg.semantic.enabled and cfg.semantic.positive_min is not None:
        reasons[(reasons == "") & (sem < cfg.semantic.positive_min)] = Reason.positive_meaning_lost
    drops = {}
    for j in np.flatnonzero(reasons != ""):
        r = reasons[j]
        drops[groups[j]] = Drop(
            FilterName.surface if r == Reason.positive_out_of_band else FilterName.semantic,
            r,
            float(surf[j] if r == Reason.positive_out_of_band else sem[j]),
        )
    ratio = surf if cfg.surface.scorer == "ratio" else surface_similarity(anchors, positives)  # (G,) as the column
    slot = np.full(len(names), -1, dtype=np.int64)
    slot[order] = np.arange(len(order))
    return _Positives(groups, anchors, positives, np.asarray(ratio), sem, reasons == "", slot[gid], drops, choice)


def _choose(
    anchors: list[str], cands: list[tuple[str, ...]], rows: np.ndarray, cfg: FilterConfig, texts: _Texts
) -> np.ndarray:
    """(G,) for each group, the first of its positive candidates (best first: least surface-similar) inside the
    positive's surface band and above its embedding floor; 0 (the first) when none is, which the rules then drop."""
    sizes = np.array([len(c) for c in cands], dtype=np.int64)  # (G,)
    owner = np.repeat(np.arange(len(cands)), sizes)  # (C,) the group of each candidate
    flat = [x for c in cands for x in c]
    ok = np.ones(len(flat), dtype=bool)  # (C,)
    if cfg.surface.enabled:
        surf = surface_scores([anchors[g] for g in owner.tolist()], flat, cfg.surface.scorer)
        ok &= in_band(surf, cfg.surface.positive.low, cfg.surface.positive.high)
    if cfg.semantic.enabled and cfg.semantic.positive_min is not None:
        ok &= (
            texts.cos(texts.anchor[rows][owner], np.array([texts.code[x] for x in flat], dtype=np.int64))
            >= cfg.semantic.positive_min
        )
    rank = np.arange(len(flat)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # (C,) the candidate's place in its group
    choice = np.zeros(len(cands), dtype=np.int64)
    good = np.flatnonzero(ok)
    grp, first = np.unique(owner[good], return_index=True)  # the first good candidate of each group that has one
    choice[grp] = rank[good[first]]
    return choice


def positive_funnel(sc: Scored) -> tuple[int, dict[str, int]]:
    """(groups with a positive, dropped positives by reason) for the funnel's first step."""
    return len(sc.pos_groups), dict(sorted(Counter(d.reason for d in sc.positive_drops.values()).items()))
