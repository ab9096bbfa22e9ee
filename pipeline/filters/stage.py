"""The filter stage: every data kind hands it :class:`Pairs` and gets back which rows to keep, why the others
were dropped (filter, reason, the score that dropped them), the score columns, the funnel and the report.

Order (a row's drop reason is the first rule it fails): positives (surface band, meaning kept), then
negatives: dedup -> surface band -> semantic rules -> blind balancing (on the rows still alive) ->
propensity weights (on the kept rows). Each rule is one pure function from ``pipeline/filters``; this
module only applies them and counts. What a row's own block decides is scored per block
(:mod:`pipeline.filters.score`) and spilled to Arrow (:mod:`pipeline.filters.spill`); :func:`decide` makes the
global decisions out of core, a block at a time, in passes over those files:

1. exact dedup: the rows' pair keys are hash-partitioned to disk (``PARTITION_ROWS`` per partition) and each
   partition is sorted by (key, published first, row): every row after the first of its key is a duplicate;
2. the row rules (dedup, surface band, semantic), per block; the blind bins' |gap| quantiles from a sample of
   ``EDGE_SAMPLE`` rows per stratum (the rows of smallest id hash: every row of a smaller stratum);
3. blind balancing: cells are counted per 1,024 buckets of id hash; each cell keeps its quota of smallest
   hashes, found by a pass over the rows of the one bucket where the quota falls;
4. the propensity model is cross-fitted on a sample of ``FIT_SAMPLE`` pairs (every pair below) and predicts the
   pairs outside it; the weights are normalised by their mean over every pair.

Memory is a block plus the samples and the partition, whatever the number of rows; every sample is exact for
a dataset below its size, so a small run decides as the in-memory rules would.

Why one module of about 450 lines: the global decisions share one pass over the spilled scores and one set of
samples; split, each step would re-read the spill."""

from __future__ import annotations

import gc
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.filters.blind import key_rank
from pipeline.filters.config import FilterConfig, FilterName
from pipeline.filters.propensity import cross_fit, fit_all, inverse_weights, weighted_auc
from pipeline.filters.score import Drop, Pairs, Scored, Scorers, positive_funnel, score, semantic_reasons_of
from pipeline.filters.spill import Cells, Duplicates, ScoredSpill, Smallest
from pipeline.filters.surface import in_band
from pipeline.records import Reason
from pipeline.shards.writer import Spool

__all__ = ["Decisions", "Drop", "FunnelStep", "Pairs", "Scorers", "StageResult", "decide", "run_stage"]

PARTITION_ROWS = 1 << 20  # exact dedup: rows of one hash partition held at once (about 90 bytes each with the sort)
EDGE_SAMPLE = 100_000  # blind bins: rows per stratum whose |gap| quantiles cut the bins
FIT_SAMPLE = 200_000  # propensity: pairs the model is cross-fitted on
PLOT_SAMPLE = 50_000  # rows per plotted series


@dataclass(frozen=True)
class FunnelStep:
    filter: FilterName
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
    positive_choice: dict[str, int] = field(default_factory=dict)  # group -> its k-th alternative became the positive

    def drop(self, i: int) -> Drop | None:
        """Why row ``i`` was dropped (None when kept); blind drops carry every scorer's gap as detail."""
        if self.keep[i]:
            return None
        detail = self.notes.get(i, "")
        if self.drop_filter[i] == FilterName.blind and self.gaps is not None:
            detail = ", ".join(f"{nm} gap {g:+.3f}" for nm, g in zip(self.gap_names, self.gaps[i]))
        return Drop(FilterName(self.drop_filter[i]), Reason(self.drop_reason[i]), float(self.drop_score[i]), detail)


class _Why:
    """The first filter, rule and score that dropped each row of a block, filled step by step."""

    def __init__(self, n: int, pinned: np.ndarray):
        self.free = ~pinned  # (N,) rows a filter may drop (published rows are not)
        self.filter = np.full(n, "", dtype=object)
        self.reason = np.full(n, "", dtype=object)
        self.score = np.full(n, np.nan, dtype=np.float32)
        self.notes: dict[int, str] = {}
        self.funnel: list[FunnelStep] = []

    def step(self, name: FilterName, reasons: np.ndarray, scores: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Drop alive rows whose ``reasons`` entry is non-empty (never a published one); record them; return the
        new alive mask."""
        hit = alive & self.free & (reasons != "")
        self.filter[hit], self.reason[hit], self.score[hit] = name, reasons[hit], scores[hit]
        names, counts = np.unique(reasons[hit].astype(str), return_counts=True)
        dropped = {str(k): int(c) for k, c in zip(names, counts)}
        self.funnel.append(FunnelStep(name, int(alive.sum()), dropped, int((alive & ~hit).sum())))
        return alive & ~hit


def _add_funnel(total: dict[str, FunnelStep], steps: list[FunnelStep]) -> None:
    """Sum a block's funnel steps into ``total`` (by filter, in order)."""
    for f in steps:
        t = total.get(f.filter)
        if t is not None:
            f = FunnelStep(
                f.filter,
                t.rows_in + f.rows_in,
                dict(sorted((Counter(t.dropped) + Counter(f.dropped)).items())),
                t.rows_out + f.rows_out,
            )
        total[f.filter] = f


def _rules(sc: Scored, cfg: FilterConfig, dups: tuple | None) -> tuple[_Why, np.ndarray]:
    """A block's row rules: dedup (exact across blocks, given as ``dups``; near within groups), surface band,
    semantic rules. Returns the block's drops so far and its alive mask."""
    n = sc.n
    why, alive = _Why(n, sc.pinned), np.ones(n, dtype=bool)
    if cfg.dedup.enabled:
        assert dups is not None, "dedup is on: the cross-block duplicates are given"
        rows, first_pinned, first_ids = dups
        reasons = np.full(n, "", dtype=object)
        reasons[rows] = np.where(first_pinned, Reason.duplicate_of_published, Reason.exact_duplicate)
        scores = np.zeros(n)
        scores[rows] = 1.0  # an exact duplicate scores 1; a near one its ratio
        why.notes = {
            int(i): f"repeats published row {f.decode()}" for i, p, f in zip(rows, first_pinned, first_ids) if p
        }
        if cfg.dedup.near_threshold is not None:
            hit = (reasons == "") & (sc.near >= cfg.dedup.near_threshold)
            reasons[hit], scores[hit] = Reason.near_duplicate, sc.near[hit]
        alive = why.step(FilterName.dedup, reasons, scores, alive)
    if cfg.surface.enabled:
        bad = ~in_band(sc.band, cfg.surface.negative.low, cfg.surface.negative.high)
        alive = why.step(
            FilterName.surface, np.where(bad, Reason.negative_out_of_band, "").astype(object), sc.band, alive
        )
    if cfg.semantic.enabled:
        alive = why.step(FilterName.semantic, semantic_reasons_of(sc, cfg), sc.semantic_sim, alive)
    return why, alive


def _strata(sc: Scored, cfg: FilterConfig) -> np.ndarray:
    """(N,) the blind stratum of each row: its split, and its type when balancing is per type."""
    return (
        np.char.add(np.char.add(sc.splits.astype(str), "/"), sc.strata.astype(str))
        if cfg.blind.per_type
        else sc.splits.astype(str)
    )


class _Rates:
    """Per group of rows and blind scorer: rows, rows whose gap is > 0 and = 0, before and after balancing."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.counts: dict[str, np.ndarray] = {}  # group -> (2, 3, S) counts

    def add(self, group: str, gaps: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
        c = self.counts.setdefault(group, np.zeros((2, 3, len(self.names)), np.int64))
        for k, m in enumerate((before, after)):
            g = gaps[m]
            c[k] += np.stack([np.full(g.shape[1], len(g)), (g > 0).sum(0), (g == 0).sum(0)])

    def report(self, group: str) -> dict:
        c = self.counts.get(group, np.zeros((2, 3, len(self.names)), np.int64))

        def rate(k, j):
            n = c[k, 0, j]
            return float((c[k, 1, j] + 0.5 * c[k, 2, j]) / n) if n else float("nan")  # as pick_rate of no row

        return {
            nm: {
                "before": rate(0, j),
                "after": rate(1, j),
                "rows_before": int(c[0, 0, j]),
                "rows_after": int(c[1, 0, j]),
            }
            for j, nm in enumerate(self.names)
        }


DECISION_SCHEMA = pa.schema(
    [
        ("keep", pa.bool_()),
        ("filter", pa.string()),
        ("reason", pa.string()),
        ("score", pa.float32()),
        ("note", pa.string()),
        ("propensity", pa.float32()),
        ("weight", pa.float64()),
    ]
)


@dataclass
class Decisions:
    """The filter stage's decisions on every block, on disk; :meth:`block` gives one block's :class:`StageResult`
    (rows numbered within the block). Funnel, report and plotted samples are the whole dataset's."""

    spill: ScoredSpill
    file: Spool
    funnel: list[FunnelStep]
    report: dict
    histograms: dict
    gap_names: tuple[str, ...]
    blind: bool
    weight_mean: float = 1.0  # the negatives' mean inverse-propensity weight (they are normalised to mean 1)

    @property
    def blocks(self) -> int:
        """How many blocks were decided (as many as were scored)."""
        return self.spill.blocks

    def block(self, b: int) -> StageResult:
        sc, d = self.spill.block(b), self.file.batch(b)
        col = {name: d.column(name).to_numpy(zero_copy_only=False) for name in DECISION_SCHEMA.names}
        keep = col["keep"].astype(bool)
        weight = np.where(keep & ~np.isnan(col["propensity"]), col["weight"] / self.weight_mean, 1.0).astype(np.float32)
        notes = {i: v for i, v in enumerate(col["note"].tolist()) if v}
        return StageResult(
            keep=keep,
            drop_filter=col["filter"],
            drop_reason=col["reason"],
            drop_score=col["score"].astype(np.float32),
            positive_drops=sc.positive_drops,
            surface_sim=sc.surface_sim,
            semantic_sim=sc.semantic_sim,
            propensity=col["propensity"].astype(np.float32),
            weight=weight,
            funnel=self.funnel,
            report=self.report,
            histograms=self.histograms,
            gaps=sc.gaps if self.blind else None,
            gap_names=self.gap_names,
            notes=notes,
            positive_choice=(
                {g: int(k) for g, k in zip(sc.pos_groups, sc.pos_choice) if k} if sc.pos_choice is not None else {}
            ),
        )


def run_stage(p: Pairs, cfg: FilterConfig, scorers: Scorers) -> StageResult:
    """Apply ``cfg``'s filters to ``p`` (one block) in the order of the module docstring."""
    with tempfile.TemporaryDirectory(prefix="contrastgen-filter-") as folder:
        spill = ScoredSpill(Path(folder), len(cfg.blind.scorers) if cfg.blind.enabled else 0)
        spill.add(score(p, cfg, scorers))
        return decide(spill, cfg).block(0)


def decide(spill: ScoredSpill, cfg: FilterConfig) -> Decisions:
    """The global decisions on every block's spilled columns, out of core (the module docstring's passes)."""
    paused = gc.isenabled()
    gc.disable()  # the stage makes many short-lived objects and no reference cycles: without the cyclic
    try:  # collector's repeated passes over every live object it runs faster
        return _decide(spill, cfg)
    finally:
        if paused:
            gc.enable()


def _decide(spill: ScoredSpill, cfg: FilterConfig) -> Decisions:
    dups = Duplicates(spill, spill.folder, PARTITION_ROWS) if cfg.dedup.enabled else None
    names = tuple(s.value for s in cfg.blind.scorers) if cfg.blind.enabled else ()
    cells = Cells(cfg, len(names), EDGE_SAMPLE) if names else None

    def blocks():  # each block with its rules applied, its row rank, global rows, stratum and balanced rows
        for b, sc in spill:
            lo, hi = spill.offsets[b], spill.offsets[b + 1]
            why, alive = _rules(sc, cfg, dups.block(lo, hi) if dups else None)
            rank = spill.batch(b).column("rank").to_numpy()
            balanced = alive & np.isin(sc.splits.astype(str), cfg.blind.splits) if names else np.zeros(sc.n, bool)
            yield b, sc, why, alive, rank, np.arange(lo, hi), balanced

    if cells is not None:  # the blind passes: bin edges, cell counts, the boundary buckets' rows
        for _, sc, _, _, rank, _, m in blocks():
            cells.sample(_strata(sc, cfg)[m], rank[m], sc.gaps[m])
        for _, sc, _, _, rank, _, m in blocks():
            cells.count(_strata(sc, cfg)[m], rank[m], sc.gaps[m])
        cells.plan()
        for _, sc, _, _, rank, rows, m in blocks():
            cells.boundary_rows(_strata(sc, cfg)[m], rank[m], sc.gaps[m], rows[m])
    out = Spool(spill.folder / "decisions.arrow", DECISION_SCHEMA, indexed=True)
    funnel: dict[str, FunnelStep] = {}
    groups, dropped = 0, Counter[str]()
    rates = _Rates(names)
    plots: dict[tuple[str, str], Smallest] = {}
    fit = Smallest(FIT_SAMPLE)
    for b, sc, why, alive, rank, rows, balanced in blocks():
        g, d = positive_funnel(sc)
        groups, dropped = groups + g, dropped + Counter(d)
        if cells is not None:
            keep = alive.copy()
            keep[balanced] = cells.keep(_strata(sc, cfg)[balanced], rank[balanced], sc.gaps[balanced])
            before = alive.copy()
            alive = why.step(
                FilterName.blind, np.where(alive & ~keep, Reason.blind_balance, "").astype(object), sc.gaps[:, 0], alive
            )
            split, kind = sc.splits.astype(str), sc.strata.astype(str)
            rates.add("", sc.gaps, before & np.isin(split, cfg.blind.splits), alive & np.isin(split, cfg.blind.splits))
            for sp in np.unique(split).tolist():
                rates.add(f"split/{sp}", sc.gaps, before & (split == sp), alive & (split == sp))
            for t in np.unique(kind).tolist():
                rates.add(f"type/{t}", sc.gaps, before & (kind == t), alive & (kind == t))
            for j, nm in enumerate(names):
                _plot(plots, f"blind_gap_{nm}", "before balancing", rank[before], sc.gaps[before, j])
                _plot(plots, f"blind_gap_{nm}", "kept", rank[alive], sc.gaps[alive, j])
        _add_funnel(funnel, why.funnel)
        _plots(plots, sc, rank, alive)
        if cfg.propensity.enabled:
            _fit_sample(fit, sc, alive, rows, spill.n + spill.group_offsets[b])
        n = sc.n
        out.write(
            pa.record_batch(
                [
                    pa.array(alive),
                    pa.array(why.filter.tolist(), pa.string()),
                    pa.array(why.reason.tolist(), pa.string()),
                    pa.array(why.score, pa.float32()),
                    pa.array([why.notes.get(i, "") for i in range(n)], pa.string()),
                    pa.array(np.full(n, np.nan, np.float32)),
                    pa.array(np.ones(n)),
                ],
                schema=DECISION_SCHEMA,
            )
        )
    steps = [
        FunnelStep(FilterName.positives, groups, dict(sorted(dropped.items())), groups - sum(dropped.values())),
        *funnel.values(),
    ]
    report: dict = {}
    if names:
        report["blind"] = rates.report("")
        report["blind_by_split"] = {k[6:]: rates.report(k) for k in sorted(rates.counts) if k.startswith("split/")}
        report["blind_by_type"] = {k[5:]: rates.report(k) for k in sorted(rates.counts) if k.startswith("type/")}
    histograms: dict = {}
    for (name, label), s in sorted(plots.items(), key=lambda kv: _PLOT_ORDER.get(kv[0][1], 9)):
        histograms.setdefault(name, {})[label] = s.result()["value"]
    dec = Decisions(spill, out, steps, report, histograms, names, bool(names))
    if cfg.propensity.enabled:
        report["propensity"] = _propensity(dec, fit, cfg)
    return dec


_PLOT_ORDER = {"positive": 0, "negative kept": 1, "negative dropped": 2, "before balancing": 3, "kept": 4}


def _plot(plots: dict, name: str, label: str, rank: np.ndarray, values: np.ndarray) -> None:
    plots.setdefault((name, label), Smallest(PLOT_SAMPLE)).add(rank, value=np.asarray(values, np.float64))


def _plots(plots: dict, sc: Scored, rank: np.ndarray, alive: np.ndarray) -> None:
    """The block's rows in the card's score plots (a sample of ``PLOT_SAMPLE`` rows per series)."""
    group_rank = key_rank(sc.pos_groups)
    for name, column, positive in (
        ("surface_sim", sc.surface_sim, sc.pos_ratio),
        ("semantic_sim", sc.semantic_sim, sc.pos_cos),
    ):
        _plot(plots, name, "positive", group_rank[sc.pos_kept], positive[sc.pos_kept])
        _plot(plots, name, "negative kept", rank[alive], column[alive])
        _plot(plots, name, "negative dropped", rank[~alive], column[~alive])


def _pair_features(sc: Scored, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The block's propensity pairs: kept negatives (label 0) and the kept positives of groups with a kept negative
    (label 1): (row numbers in the block, group numbers in the block, features (M, 5), labels (M,))."""
    idx = np.flatnonzero(alive)
    alive_g = np.zeros(len(sc.pos_groups), dtype=bool)
    g = sc.pos_of_row[idx]
    alive_g[g[g >= 0]] = True
    grp = np.flatnonzero(sc.pos_kept & alive_g)
    sem = np.concatenate([sc.semantic_sim[idx], sc.pos_cos[grp]]).astype(np.float32)
    feats = np.column_stack([np.concatenate([sc.feats[idx], sc.pos_feats[grp]]), sem]) if len(sem) else np.zeros((0, 5))
    return idx, grp, feats, np.r_[np.zeros(len(idx), int), np.ones(len(grp), int)]


def _fit_sample(fit: Smallest, sc: Scored, alive: np.ndarray, rows: np.ndarray, group_base: int) -> None:
    """Add the block's pairs to the fitting sample, ordered as the in-memory fit orders them: negatives by row, then
    positives by group (``group_base``: past every row)."""
    idx, grp, feats, labels = _pair_features(sc, alive)
    rank = np.concatenate(
        [key_rank([i.decode() for i in sc.ids[idx].tolist()]), key_rank([sc.pos_groups[i] for i in grp.tolist()])]
    )
    fit.add(rank, order=np.concatenate([rows[idx], group_base + grp]), feats=feats, label=labels)


def _propensity(dec: Decisions, fit: Smallest, cfg: FilterConfig) -> dict:
    """Cross-fit on the sample, predict the pairs outside it, write each block's propensity and raw weight, and
    normalise the negatives' weights by their mean over every pair (the positives' only enter the report)."""
    s = fit.result("order")
    labels = s["label"]
    if not (labels == 0).any() or not (labels == 1).any():
        return {"pairs": fit.seen, "note": "no positive or no negative kept: weights left at 1"}
    p_sample = cross_fit(s["feats"], labels, cfg.propensity.folds)
    outside = fit_all(s["feats"], labels) if fit.seen > len(labels) else None
    sums, mins, maxs, counts = np.zeros(2), np.full(2, np.inf), np.zeros(2), np.zeros(2, np.int64)
    spill, written = dec.spill, Spool(dec.spill.folder / "weighted.arrow", DECISION_SCHEMA, indexed=True)
    for b in range(spill.blocks):
        sc, d = spill.block(b), dec.file.batch(b)
        idx, grp, feats, lab = _pair_features(sc, d.column("keep").to_numpy(zero_copy_only=False).astype(bool))
        order = np.concatenate([spill.offsets[b] + idx, spill.n + spill.group_offsets[b] + grp])
        at = np.minimum(np.searchsorted(s["order"], order), len(labels) - 1)
        inside = s["order"][at] == order
        p = np.empty(len(order))
        p[inside] = p_sample[at[inside]]
        if (~inside).any():
            assert outside is not None  # pairs outside the sample exist only when fit.seen > the sample
            p[~inside] = outside(feats[~inside])
        p, w = inverse_weights(p, lab, cfg.propensity.clip)
        for k in (0, 1):
            wk = w[lab == k]
            if len(wk):
                sums[k], counts[k] = sums[k] + wk.sum(), counts[k] + len(wk)
                mins[k], maxs[k] = min(mins[k], wk.min()), max(maxs[k], wk.max())
        prop, weight = np.full(sc.n, np.nan, np.float32), np.ones(sc.n)
        prop[idx], weight[idx] = p[: len(idx)], w[: len(idx)]
        written.write(d.set_column(5, "propensity", pa.array(prop)).set_column(6, "weight", pa.array(weight)))
    dec.file, mean = written, sums / np.maximum(counts, 1)
    dec.weight_mean = float(mean[0])
    p_fit, w_fit = inverse_weights(p_sample, labels, cfg.propensity.clip)
    w_fit = w_fit / mean[labels]
    surf, sem = s["feats"][:, 0], s["feats"][:, 4]
    report: dict[str, object] = {
        "pairs": int(counts.sum()),
        "positive_pairs": int(counts[1]),
        "negative_pairs": int(counts[0]),
        "auc_surface_before": weighted_auc(surf, labels),
        "auc_surface_after": weighted_auc(surf, labels, w_fit),
        "auc_semantic_before": weighted_auc(sem, labels),
        "auc_semantic_after": weighted_auc(sem, labels, w_fit),
        "weight_min": float((mins / mean).min()),
        "weight_max": float((maxs / mean).max()),
    }
    if outside is not None:
        report["fitted_on"] = f"a sample of {len(labels)} pairs (smallest id hash); the AUCs are the sample's"
    return report
