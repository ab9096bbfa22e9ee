"""The filter stage: every data kind hands it :class:`Pairs` and gets back which rows to keep, why the others
were dropped (filter, reason, the score that dropped them), the score columns, the funnel and the report.

Order (a row's drop reason is the first rule it fails): positives (surface band, meaning kept), then
negatives: dedup -> surface band -> semantic rules -> blind balancing (on the rows still alive) ->
propensity weights (on the kept rows). Each rule is one pure function from ``pipeline/filters``; this
module only applies them and counts. What a row's own block decides is scored per block
(:mod:`pipeline.filters.score`); :func:`decide` takes the concatenated columns of every block and makes the
global decisions (exact dedup, blind balancing, the propensity fit), holding numbers, not texts.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import FilterConfig
from pipeline.filters.blind import balance_mask, pick_rate
from pipeline.filters.propensity import propensity_weights, weighted_auc
from pipeline.filters.score import Drop, Pairs, Scored, Scorers, positive_funnel, score, semantic_reasons_of
from pipeline.filters.surface import in_band

__all__ = ["Drop", "FunnelStep", "Pairs", "Scorers", "StageResult", "decide", "run_stage"]


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

    def __init__(self, n: int, pinned: np.ndarray):
        self.free = ~pinned  # (N,) rows a filter may drop (published rows are not)
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


def run_stage(p: Pairs, cfg: FilterConfig, scorers: Scorers) -> StageResult:
    """Apply ``cfg``'s filters to ``p`` (one block) in the order of the module docstring."""
    return decide(score(p, cfg, scorers), cfg)


def decide(sc: Scored, cfg: FilterConfig) -> StageResult:
    """The global decisions on the concatenated columns of every block (:mod:`pipeline.filters.score`)."""
    paused = gc.isenabled()
    gc.disable()  # the stage makes millions of short-lived objects and no reference cycles: without the cyclic
    try:  # collector's repeated passes over every live object it runs about 5% faster
        return _decide(sc, cfg)
    finally:
        if paused:
            gc.enable()


def _dedup(sc: Scored, cfg: FilterConfig) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(reasons, scores, notes) of exact dedup over every block (the first row of a pair is kept, published rows
    counting first; a new row repeating a published one is named as such) and near dedup within groups."""
    n = sc.n
    order = np.lexsort((np.arange(n), ~sc.pinned))  # published rows first, then row order
    _, at, inverse = np.unique(sc.dup_key[order], return_index=True, return_inverse=True)
    first = np.empty(n, dtype=np.int64)
    first[order] = order[at][inverse.reshape(-1)]  # (N,) the first row of each row's pair
    exact = first != np.arange(n)
    reasons = np.where(exact, "exact_duplicate", "").astype(object)
    notes = {}
    for i in np.flatnonzero(exact & sc.pinned[first]).tolist():
        reasons[i], notes[i] = "duplicate_of_published", f"repeats published row {sc.ids[first[i]].decode()}"
    scores = np.where(exact, 1.0, 0.0)  # an exact duplicate scores 1; a near one its ratio
    if cfg.dedup.near_threshold is not None:
        hit = ~exact & (sc.near >= cfg.dedup.near_threshold)
        reasons[hit], scores[hit] = "near_duplicate", sc.near[hit]
    return reasons, scores, notes


def _decide(sc: Scored, cfg: FilterConfig) -> StageResult:
    n, notes = sc.n, {}
    why = _Why(n, sc.pinned)
    groups, dropped = positive_funnel(sc)
    why.funnel.append(FunnelStep("positives", groups, dropped, groups - sum(dropped.values())))
    alive = np.ones(n, dtype=bool)
    if cfg.dedup.enabled:
        reasons, scores, notes = _dedup(sc, cfg)
        alive = why.step("dedup", reasons, scores, alive)
    if cfg.surface.enabled:
        bad = ~in_band(sc.band, cfg.surface.negative.low, cfg.surface.negative.high)
        alive = why.step("surface", np.where(bad, "negative_out_of_band", "").astype(object), sc.band, alive)
    if cfg.semantic.enabled:
        alive = why.step("semantic", semantic_reasons_of(sc, cfg), sc.semantic_sim, alive)
    report: dict = {}
    blind_hist: dict = {}
    names: tuple[str, ...] = ()
    if cfg.blind.enabled:
        names = tuple(s.value for s in cfg.blind.scorers)
        alive, blind_report, blind_hist = _balance(sc, cfg, names, alive, why)
        report.update(blind_report)
    propensity = np.full(n, np.nan, dtype=np.float32)
    weight = np.ones(n, dtype=np.float32)
    if cfg.propensity.enabled:
        report["propensity"] = _propensity(sc, cfg, alive, propensity, weight)
    histograms = {
        "surface_sim": {"positive": sc.pos_ratio[sc.pos_kept], "negative kept": sc.surface_sim[alive],
                        "negative dropped": sc.surface_sim[~alive]},
        "semantic_sim": {"positive": sc.pos_cos[sc.pos_kept], "negative kept": sc.semantic_sim[alive],
                         "negative dropped": sc.semantic_sim[~alive]},
        **blind_hist,
    }
    return StageResult(alive, why.filter, why.reason, why.score, sc.positive_drops, sc.surface_sim, sc.semantic_sim,
                       propensity, weight, why.funnel, report, histograms, sc.gaps if cfg.blind.enabled else None, names, notes)


def _balance(sc: Scored, cfg: FilterConfig, names: tuple[str, ...], alive: np.ndarray, why: _Why):
    """Blind balancing of the configured splits; rates of every split before and after, and gap histograms."""
    gaps, split_arr, strata_arr = sc.gaps, sc.splits.astype(str), sc.strata.astype(str)
    balanced = np.isin(split_arr, cfg.blind.splits)  # (N,) rows of the splits being balanced
    keep = alive.copy()
    idx = np.flatnonzero(alive & balanced)
    strata = (np.char.add(np.char.add(split_arr[idx], "/"), strata_arr[idx]) if cfg.blind.per_type else split_arr[idx]).tolist()
    keep[idx] = balance_mask(gaps[idx], strata, [i.decode() for i in sc.ids[idx].tolist()], cfg.blind.bins, cfg.blind.max_rate)
    before = alive.copy()
    alive = why.step("blind", np.where(alive & ~keep, "blind_balance", "").astype(object), gaps[:, 0], alive)
    report = {
        "blind": _rates(gaps, names, before & balanced, alive & balanced),
        "blind_by_split": {sp: _rates(gaps, names, before & (split_arr == sp), alive & (split_arr == sp))
                           for sp in sorted(set(split_arr.tolist()))},
        "blind_by_type": {t: _rates(gaps, names, before & (strata_arr == t), alive & (strata_arr == t))
                          for t in sorted(set(strata_arr.tolist()))},
    }
    hist = {f"blind_gap_{nm}": {"before balancing": gaps[before, j], "kept": gaps[alive, j]} for j, nm in enumerate(names)}
    return alive, report, hist


def _rates(gaps: np.ndarray, names: list[str], before: np.ndarray, after: np.ndarray) -> dict:
    """Per blind scorer: how often it picks the anchor among the rows entering balancing and the rows kept."""
    return {nm: {"before": pick_rate(gaps[before, j]), "after": pick_rate(gaps[after, j]), "rows_before": int(before.sum()),
                 "rows_after": int(after.sum())} for j, nm in enumerate(names)}


def _propensity(sc: Scored, cfg: FilterConfig, alive: np.ndarray, propensity: np.ndarray, weight: np.ndarray) -> dict:
    """Fit on kept negatives (label 0) and kept positives (label 1); fill the negatives' columns in place."""
    idx = np.flatnonzero(alive)
    alive_g = np.zeros(len(sc.pos_groups), dtype=bool)
    g = sc.pos_of_row[idx]
    alive_g[g[g >= 0]] = True
    groups = np.flatnonzero(sc.pos_kept & alive_g)  # (G',) kept positives of groups with a kept negative
    labels = np.array([0] * len(idx) + [1] * len(groups))
    if len(groups) == 0 or len(idx) == 0:
        return {"pairs": len(labels), "note": "no positive or no negative kept: weights left at 1"}
    sem = np.concatenate([sc.semantic_sim[idx], sc.pos_cos[groups]]).astype(np.float32)
    feats = np.column_stack([np.concatenate([sc.feats[idx], sc.pos_feats[groups]]), sem])  # (M, 5)
    prop, w = propensity_weights(feats, labels, clip=cfg.propensity.clip, folds=cfg.propensity.folds)
    propensity[idx], weight[idx] = prop[: len(idx)], w[: len(idx)]
    surf = feats[:, 0]
    return {
        "pairs": int(len(labels)), "positives": len(groups), "negatives": int(len(idx)),
        "auc_surface_before": weighted_auc(surf, labels), "auc_surface_after": weighted_auc(surf, labels, w),
        "auc_semantic_before": weighted_auc(sem, labels), "auc_semantic_after": weighted_auc(sem, labels, w),
        "weight_min": float(w.min()), "weight_max": float(w.max()),
    }
