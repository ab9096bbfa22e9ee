"""The filter stage: every data kind hands it :class:`Pairs` and gets back which rows to keep, why the others
were dropped (filter, reason, the score that dropped them), the score columns, the funnel and the report.

Order (a row's drop reason is the first rule it fails): positives (surface band, meaning kept), then
negatives: dedup -> surface band -> semantic rules -> blind balancing (on the rows still alive) ->
propensity weights (on the kept rows). Each rule is one pure function from ``pipeline/filters``; this
module only applies them and counts.
"""

from __future__ import annotations

import functools
import gc
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline.config import FilterConfig
from pipeline.filters.blind import balance_mask, bigram_logprob, pick_rate
from pipeline.filters.dedup import near_duplicate_scores, normalise_all, repeated
from pipeline.filters.propensity import (
    propensity_weights,
    surface_features,
    weighted_auc,
)
from pipeline.filters.semantic import cosine_rows, semantic_reasons
from pipeline.filters.surface import in_band, surface_scores, surface_similarity
from pipeline.filters.words import Words


class Scorers(Protocol):
    def embed_rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]: ...  # [M, D] unit vectors, (N,) rows
    def lm(self, texts: list[str]) -> np.ndarray: ...  # (N,) mean token log-prob


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


@dataclass(frozen=True)
class Drop:
    filter: str
    reason: str
    score: float
    detail: str = ""


@dataclass(frozen=True)
class FunnelStep:
    filter: str
    rows_in: int
    dropped: dict[str, int]
    rows_out: int


@dataclass
class StageResult:
    keep: np.ndarray  # (N,) bool
    drop_filter: np.ndarray  # (N,) object: the filter that dropped the row, "" when kept
    drop_reason: np.ndarray  # (N,) object: its rule, "" when kept
    drop_score: np.ndarray  # (N,) float: the score that dropped it
    positive_drops: dict[str, Drop]  # group -> why its positive was dropped
    surface_sim: np.ndarray  # (N,) rapidfuzz ratio, anchor vs negative
    semantic_sim: np.ndarray  # (N,) cosine, anchor vs negative
    propensity: np.ndarray  # (N,) P(positive | pair features), NaN where not kept
    weight: np.ndarray  # (N,) inverse-propensity weight of the negative, 1 where not computed
    funnel: list[FunnelStep]
    report: dict = field(default_factory=dict)
    histograms: dict = field(default_factory=dict)  # name -> {label: scores array} for the card's plots
    gaps: np.ndarray | None = None  # (N, S) blind score gaps, when blind balancing ran (NaN: dropped before it)
    gap_names: tuple[str, ...] = ()
    notes: dict[int, str] = field(default_factory=dict)  # row -> detail of its drop (the published row it repeats)

    def drop(self, i: int) -> Drop | None:
        """Why row ``i`` was dropped (None when kept); blind drops carry every scorer's gap as detail."""
        if self.keep[i]:
            return None
        detail = self.notes.get(i, "")
        if self.drop_filter[i] == "blind" and self.gaps is not None:
            detail = ", ".join(f"{nm} gap {g:+.3f}" for nm, g in zip(self.gap_names, self.gaps[i]))
        return Drop(str(self.drop_filter[i]), str(self.drop_reason[i]), float(self.drop_score[i]), detail)


class _Why:
    """The first filter, rule and score that dropped each row, filled step by step."""

    def __init__(self, n: int, pinned: int = 0):
        self.free = np.arange(n) >= pinned  # (N,) rows a filter may drop (published rows are not)
        self.filter = np.full(n, "", dtype=object)
        self.reason = np.full(n, "", dtype=object)
        self.score = np.full(n, np.nan, dtype=np.float32)
        self.funnel: list[FunnelStep] = []

    def step(self, name: str, reasons: np.ndarray, scores: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Drop alive rows whose ``reasons`` entry is non-empty (never a published one); record them; return the
        new alive mask."""
        hit = alive & self.free & (reasons != "")
        self.filter[hit], self.reason[hit], self.score[hit] = name, reasons[hit], scores[hit]
        names, counts = np.unique(reasons[hit].astype(str), return_counts=True)
        dropped = {str(k): int(c) for k, c in zip(names, counts)}
        self.funnel.append(FunnelStep(name, int(alive.sum()), dropped, int((alive & ~hit).sum())))
        return alive & ~hit


class _Texts:
    """Every distinct text of the pairs (``texts``, in first-seen order), the number of each row's anchor,
    negative and positive (-1: none) among them; embedded once."""

    def __init__(self, p: Pairs, scorers: Scorers):
        self.scorers = scorers
        n, has_pos = len(p.ids), np.array([x is not None for x in p.positives], dtype=bool)
        every = np.array([*p.anchors, *p.negatives, *(x for x in p.positives if x is not None)], dtype=object)
        codes, uniq = pd.factorize(every)  # one number per distinct text, one hash lookup per text
        self.texts: list[str] = uniq.tolist()
        self.anchor, self.negative = codes[:n], codes[n : 2 * n]  # (N,), (N,)
        self.positive = np.full(n, -1, dtype=np.int64)  # (N,)
        self.positive[has_pos] = codes[2 * n :]
        # (M, D) embeddings and (U,) the row of each distinct text in them
        self.matrix, self.emb_row = scorers.embed_rows(self.texts) if self.texts else (np.zeros((0, 1), np.float32), np.zeros(0, np.int64))

    @functools.cached_property
    def words(self) -> Words:
        """Every distinct text split into words once, for the word-level scorer and the bigram proxy."""
        return Words(self.texts)

    def cos(self, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Row-wise cosine of the texts at rows ``a`` and ``b``; shape (len(a),). Chunked: gathered rows stay in cache."""
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


@dataclass
class _Positives:
    """The positive of each group that has one (G groups, sorted by name): its first row, scores, and whether it
    survived; ``of_row`` (N,) is each row's group among them (-1: the row's group has no positive)."""

    groups: list[str]
    rows: np.ndarray  # (G,)
    ratio: np.ndarray  # (G,) fuzz.ratio anchor vs positive, as the surface_sim column
    cos: np.ndarray  # (G,)
    kept: np.ndarray  # (G,) bool
    of_row: np.ndarray  # (N,)

    def row_cos(self) -> np.ndarray:
        """(N,) cosine of each row's kept positive; NaN where there is none."""
        g = self.of_row
        if not len(self.kept):  # no group has a positive (e.g. negatives.paraphrase: false)
            return np.full(len(g), np.nan)
        has = (g >= 0) & self.kept[g]
        return np.where(has, self.cos[g], np.nan)


def _positives(p: Pairs, cfg: FilterConfig, texts: _Texts, funnel: list[FunnelStep]) -> tuple[_Positives, dict[str, Drop]]:
    """Positive of each group, its scores, and the drops of positives that fail the surface band or lose meaning."""
    gid, names = pd.factorize(np.asarray(p.groups, dtype=object))  # (N,) group number
    with_pos = np.flatnonzero(texts.positive >= 0)
    has, at = np.unique(gid[with_pos], return_index=True)  # groups with a positive; where each first has one
    first = np.full(len(names), -1, dtype=np.int64)
    first[has] = with_pos[at]  # (number of groups,) each group's first row with a positive
    order = has[np.argsort(names[has], kind="stable")]  # groups with a positive, by name
    rows, groups = first[order], names[order].tolist()
    anchors, positives = [p.anchors[i] for i in rows.tolist()], [p.positives[i] for i in rows.tolist()]
    surf = surface_scores(anchors, positives, cfg.surface.scorer)  # (G,)
    sem = texts.cos(texts.anchor[rows], texts.positive[rows])  # (G,)
    reasons = np.full(len(groups), "", dtype=object)
    if cfg.surface.enabled:
        reasons[~in_band(surf, cfg.surface.positive.low, cfg.surface.positive.high)] = "positive_out_of_band"
    if cfg.semantic.enabled and cfg.semantic.positive_min is not None:
        reasons[(reasons == "") & (sem < cfg.semantic.positive_min)] = "positive_meaning_lost"
    drops = {}
    for j in np.flatnonzero(reasons != ""):
        r = reasons[j]
        drops[groups[j]] = Drop("surface" if r == "positive_out_of_band" else "semantic", r,
                                float(surf[j] if r == "positive_out_of_band" else sem[j]))
    funnel.append(FunnelStep("positives", len(groups), dict(sorted(Counter(d.reason for d in drops.values()).items())), len(groups) - len(drops)))
    ratio = surf if cfg.surface.scorer == "ratio" else surface_similarity(anchors, positives)  # (G,) as the column
    slot = np.full(len(names), -1, dtype=np.int64)
    slot[order] = np.arange(len(order))
    return _Positives(groups, rows, ratio, sem, reasons == "", slot[gid]), drops


def run_stage(p: Pairs, cfg: FilterConfig, scorers: Scorers) -> StageResult:
    """Apply ``cfg``'s filters to ``p`` in the order of the module docstring."""
    paused = gc.isenabled()
    gc.disable()  # the stage makes millions of short-lived objects and no reference cycles: without the cyclic
    try:  # collector's repeated passes over every live object it runs about 5% faster
        return _run_stage(p, cfg, scorers)
    finally:
        if paused:
            gc.enable()


def _run_stage(p: Pairs, cfg: FilterConfig, scorers: Scorers) -> StageResult:
    n = len(p.ids)
    why, notes = _Why(n, p.pinned), {}
    texts = _Texts(p, scorers)
    pos, positive_drops = _positives(p, cfg, texts, why.funnel)
    surface_sim = surface_similarity(p.anchors, p.negatives)  # (N,) the column
    band_scores = surface_sim if cfg.surface.scorer == "ratio" else surface_scores(p.anchors, p.negatives, cfg.surface.scorer)
    semantic_sim = texts.cos(texts.anchor, texts.negative)  # (N,)
    s_pos = pos.row_cos()  # (N,)
    alive = np.ones(n, dtype=bool)

    if cfg.dedup.enabled:
        norm = normalise_all(texts.texts)  # (U,) each distinct text once
        nid = pd.factorize(np.array(norm, dtype=object))[0]  # (U,) one number per distinct normalised text
        key = nid[texts.anchor] * len(norm) + nid[texts.negative]  # (N,) the (anchor, negative) pair
        reasons = np.where(repeated(key), "exact_duplicate", "").astype(object)
        if p.pinned:  # a new row that repeats a published one is rejected as such, naming it
            codes = pd.factorize(key)[0]
            first = np.unique(codes, return_index=True)[1][codes]  # (N,) the first row with the same pair
            for i in np.flatnonzero((reasons != "") & (first < p.pinned)).tolist():
                reasons[i], notes[i] = "duplicate_of_published", f"repeats published row {p.ids[first[i]]}"
        scores = np.where(reasons != "", 1.0, 0.0)  # an exact duplicate scores 1; a near one its ratio
        if cfg.dedup.near_threshold is not None:
            idx = np.flatnonzero(reasons == "")
            near = near_duplicate_scores([norm[i] for i in texts.negative[idx].tolist()], [p.groups[i] for i in idx])
            hit = near >= cfg.dedup.near_threshold
            reasons[idx[hit]], scores[idx[hit]] = "near_duplicate", near[hit]
        alive = why.step("dedup", reasons, scores, alive)
    if cfg.surface.enabled:
        bad = ~in_band(band_scores, cfg.surface.negative.low, cfg.surface.negative.high)
        alive = why.step("surface", np.where(bad, "negative_out_of_band", "").astype(object), band_scores, alive)
    if cfg.semantic.enabled:
        s = cfg.semantic
        guard = None if s.false_negative is None else np.where(  # (N,) exempt types never count as false negatives
            np.isin(np.asarray(p.strata), s.false_negative_exempt), np.inf, s.false_negative)
        reasons = semantic_reasons(semantic_sim, s_pos, false_negative=guard, max_score=s.max_score,
                                   min_score=s.min_score, absolute_margin=s.absolute_margin, relative_margin=s.relative_margin)
        alive = why.step("semantic", reasons, semantic_sim, alive)
    report: dict = {}
    blind_hist: dict = {}
    gaps, names = None, ()
    if cfg.blind.enabled:
        gaps = blind_gaps(p, cfg, texts, alive)  # (N, S)
        names = tuple(s.value for s in cfg.blind.scorers)
        alive, blind_report, blind_hist = _balance(p, cfg, gaps, names, alive, why)
        report.update(blind_report)
    propensity = np.full(n, np.nan, dtype=np.float32)
    weight = np.ones(n, dtype=np.float32)
    if cfg.propensity.enabled:
        report["propensity"] = _propensity(p, cfg, texts, alive, pos, surface_sim, semantic_sim, propensity, weight)
    histograms = {
        "surface_sim": {"positive": pos.ratio[pos.kept], "negative kept": surface_sim[alive],
                        "negative dropped": surface_sim[~alive]},
        "semantic_sim": {"positive": pos.cos[pos.kept], "negative kept": semantic_sim[alive],
                         "negative dropped": semantic_sim[~alive]},
        **blind_hist,
    }
    return StageResult(alive, why.filter, why.reason, why.score, positive_drops, surface_sim, semantic_sim, propensity,
                       weight, why.funnel, report, histograms, gaps, names, notes)


def _balance(p: Pairs, cfg: FilterConfig, gaps: np.ndarray, names: tuple[str, ...], alive: np.ndarray, why: _Why):
    """Blind balancing of the configured splits; rates of every split before and after, and gap histograms."""
    split_arr, strata_arr = np.asarray(p.splits), np.asarray(p.strata)
    balanced = np.isin(split_arr, cfg.blind.splits)  # (N,) rows of the splits being balanced
    keep = alive.copy()
    idx = np.flatnonzero(alive & balanced)
    strata = [f"{p.splits[i]}/{p.strata[i]}" if cfg.blind.per_type else p.splits[i] for i in idx]
    keep[idx] = balance_mask(gaps[idx], strata, [p.ids[i] for i in idx], cfg.blind.bins, cfg.blind.max_rate)
    before = alive.copy()
    alive = why.step("blind", np.where(alive & ~keep, "blind_balance", "").astype(object), gaps[:, 0], alive)
    report = {
        "blind": _rates(gaps, names, before & balanced, alive & balanced),
        "blind_by_split": {sp: _rates(gaps, names, before & (split_arr == sp), alive & (split_arr == sp))
                           for sp in sorted(set(p.splits))},
        "blind_by_type": {t: _rates(gaps, names, before & (strata_arr == t), alive & (strata_arr == t))
                          for t in sorted(set(p.strata))},
    }
    hist = {f"blind_gap_{nm}": {"before balancing": gaps[before, j], "kept": gaps[alive, j]} for j, nm in enumerate(names)}
    return alive, report, hist


def _rates(gaps: np.ndarray, names: list[str], before: np.ndarray, after: np.ndarray) -> dict:
    """Per blind scorer: how often it picks the anchor among the rows entering balancing and the rows kept."""
    return {nm: {"before": pick_rate(gaps[before, j]), "after": pick_rate(gaps[after, j]), "rows_before": int(before.sum()),
                 "rows_after": int(after.sum())} for j, nm in enumerate(names)}


def blind_gaps(p: Pairs, cfg: FilterConfig, texts: _Texts, alive: np.ndarray) -> np.ndarray:
    """(N, S) score(anchor) - score(negative) for each configured blind scorer (the LM's: alive rows only)."""
    cols = []
    for s in cfg.blind.scorers:
        if s.value == "lm_loglik":
            cols.append(texts.lm_gap(alive))
        else:
            a, b = bigram_logprob(p.anchors, p.negatives, p.groups, words=texts.words)
            cols.append(a - b)
    return np.column_stack(cols).astype(np.float64) if cols else np.zeros((len(p.ids), 0))


def _propensity(p: Pairs, cfg: FilterConfig, texts: _Texts, alive: np.ndarray, pos: _Positives, surface_sim: np.ndarray,
                semantic_sim: np.ndarray, propensity: np.ndarray, weight: np.ndarray) -> dict:
    """Fit on kept negatives (label 0) and kept positives (label 1); fill the negatives' columns in place."""
    idx = np.flatnonzero(alive)
    alive_g = np.zeros(len(pos.groups), dtype=bool)
    g = pos.of_row[idx]
    alive_g[g[g >= 0]] = True
    groups = np.flatnonzero(pos.kept & alive_g)  # (G',) kept positives of groups with a kept negative, by name
    prow = pos.rows[groups].tolist()
    anchors = [p.anchors[i] for i in idx.tolist()] + [p.anchors[i] for i in prow]
    cands = [p.negatives[i] for i in idx.tolist()] + [p.positives[i] for i in prow]
    sem = np.concatenate([semantic_sim[idx], pos.cos[groups]]).astype(np.float32)
    labels = np.array([0] * len(idx) + [1] * len(groups))
    if len(groups) == 0 or len(idx) == 0:
        return {"pairs": len(labels), "note": "no positive or no negative kept: weights left at 1"}
    ratio = np.concatenate([surface_sim[idx], pos.ratio[groups]]).astype(np.float32)
    feats = np.column_stack([surface_features(anchors, cands, ratio, texts.words), sem])  # (M, 5)
    prop, w = propensity_weights(feats, labels, clip=cfg.propensity.clip, folds=cfg.propensity.folds)
    propensity[idx], weight[idx] = prop[: len(idx)], w[: len(idx)]
    surf = feats[:, 0]
    return {
        "pairs": int(len(labels)), "positives": len(groups), "negatives": int(len(idx)),
        "auc_surface_before": weighted_auc(surf, labels), "auc_surface_after": weighted_auc(surf, labels, w),
        "auc_semantic_before": weighted_auc(sem, labels), "auc_semantic_after": weighted_auc(sem, labels, w),
        "weight_min": float(w.min()), "weight_max": float(w.max()),
    }
