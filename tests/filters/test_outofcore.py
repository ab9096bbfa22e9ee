"""The global filter decisions out of core (spilled blocks, hash partitions, samples) against the in-memory pure
functions on the same rows: exact dedup, blind balancing (``balance_mask``) and the propensity fit
(``propensity_weights``) decide the same; with samples smaller than the data they stay sound."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.filters import stage
from pipeline.filters.blind import balance_mask
from pipeline.filters.propensity import propensity_weights
from pipeline.filters.score import Drop, Scored
from pipeline.filters.spill import ScoredSpill


def block(rng, b: int, n: int, pinned: int) -> Scored:
    """A block of ``n`` random rows in groups of about 5 (80% with a positive), pair keys drawn from 3,000 values
    (duplicates within and across blocks), gaps of two blind scorers rounded (ties), ``pinned`` published rows."""
    size = max(1, n // 5)
    group = rng.integers(0, size, n)
    has = rng.random(size) < 0.8
    slot = np.cumsum(has) - 1
    names = [f"b{b}g{i}" for i in np.flatnonzero(has)]
    kept = rng.random(len(names)) < 0.9
    return Scored(
        np.array([f"r{b}_{i}".encode() for i in range(n)], dtype="S"),
        np.array(rng.choice(["swap_att", "replace_obj", "add_att"], n), dtype=object),
        np.array(rng.choice(["train", "test"], n, p=[0.8, 0.2]), dtype=object),
        np.arange(n) < pinned,
        rng.random(n).astype(np.float32),
        rng.random(n).astype(np.float32),
        rng.random(n).astype(np.float32),
        np.where(has[group], slot[group], -1),
        rng.integers(0, 3000, n).astype(np.uint64),
        (rng.random(n) * 0.95).astype(np.float32),
        np.round(rng.normal(0.3, 1, (n, 2)), 2),
        rng.random((n, 4)).astype(np.float32),
        names,
        rng.random(len(names)).astype(np.float32),
        rng.random(len(names)).astype(np.float32),
        kept,
        rng.random((len(names), 4)).astype(np.float32),
        {g: Drop("surface", "positive_out_of_band", 0.1) for g, k in zip(names, kept) if not k},
    )


def run(parts, cfg, folder):
    spill = ScoredSpill(folder, 2)
    for p in parts:
        spill.add(p)
    d = stage.decide(spill, cfg)
    res = [d.block(b) for b in range(spill.blocks)]
    return d, {
        k: np.concatenate([getattr(r, k) for r in res])
        for k in ("keep", "drop_filter", "drop_reason", "weight", "propensity")
    }


def config(per_type: bool):
    return load_config(
        None,
        {
            "filters": {
                "negatives": {
                    "blind": {"splits": ["test", "train"], "per_type": per_type},
                    "surface": {"negative": {"low": 0.1, "high": 0.95}},
                }
            }
        },
    ).filters.negatives


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_out_of_core_decisions_equal_the_in_memory_rules(seed, tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "PARTITION_ROWS", 300)  # several dedup partitions
    rng = np.random.default_rng(seed)
    parts = [block(rng, b, int(rng.integers(1, 800)), int(rng.integers(0, 5))) for b in range(int(rng.integers(2, 6)))]
    parts.insert(1, block(rng, 99, 0, 0))  # a block with no row (an input block whose units all failed)
    cfg = config(per_type=bool(seed % 2))
    d, res = run(parts, cfg, tmp_path)
    ids = np.concatenate([p.ids for p in parts])
    key, pinned = np.concatenate([p.dup_key for p in parts]), np.concatenate([p.pinned for p in parts])
    order = np.lexsort((np.arange(len(key)), ~pinned))  # published first, then row order: the first of a key stays
    _, first = np.unique(key[order], return_index=True)
    original = np.zeros(len(key), bool)
    original[order[first]] = True
    assert (
        (res["drop_filter"] == "dedup") & np.isin(res["drop_reason"], ["exact_duplicate", "duplicate_of_published"])
        == (~original & ~pinned)
    ).all()
    # blind: the rows entering balancing (not dropped before it) keep exactly what balance_mask keeps
    entering = (res["drop_filter"] == "") | (res["drop_filter"] == "blind")
    gaps, splits = np.concatenate([p.gaps for p in parts]), np.concatenate([p.splits for p in parts]).astype(str)
    types = np.concatenate([p.strata for p in parts]).astype(str)
    strata = [f"{s}/{t}" if cfg.blind.per_type else s for s, t in zip(splits[entering], types[entering])]
    expected = balance_mask(
        gaps[entering], strata, [i.decode() for i in ids[entering]], cfg.blind.bins, cfg.blind.max_rate
    )
    assert (res["keep"][entering] == (expected | pinned[entering])).all()
    # propensity: the kept negatives' weights are propensity_weights' on every pair
    feats = np.concatenate([p.feats for p in parts])
    sem = np.concatenate([p.semantic_sim for p in parts])
    keep = res["keep"]
    pos = []
    for p in parts:
        alive = np.zeros(len(p.pos_groups), bool)
        g = p.pos_of_row[keep[: p.n]]
        alive[g[g >= 0]] = True
        keep = keep[p.n :]
        grp = np.flatnonzero(p.pos_kept & alive)
        pos.append(np.column_stack([p.pos_feats[grp], p.pos_cos[grp]]))
    x = np.vstack([np.column_stack([feats[res["keep"]], sem[res["keep"]]]), *pos])
    labels = np.r_[np.zeros(res["keep"].sum(), int), np.ones(len(x) - res["keep"].sum(), int)]
    p_ref, w_ref = propensity_weights(x, labels, clip=cfg.propensity.clip, folds=cfg.propensity.folds)
    assert np.allclose(res["weight"][res["keep"]], w_ref[labels == 0], rtol=1e-5)
    assert np.allclose(res["propensity"][res["keep"]], p_ref[labels == 0], rtol=1e-5)
    assert (res["weight"][~res["keep"]] == 1).all() and np.isnan(res["propensity"][~res["keep"]]).all()
    assert d.funnel[-1].rows_out == res["keep"].sum() and "fitted_on" not in d.report["propensity"]


def test_samples_smaller_than_the_data_still_balance_and_normalise(tmp_path, monkeypatch):
    """With the bin-edge and fit samples far below the rows (as at millions of rows), every balanced stratum's
    pick rate stays near one half, the kept negatives' weights have mean 1, and the report says it sampled."""
    monkeypatch.setattr(stage, "EDGE_SAMPLE", 50)
    monkeypatch.setattr(stage, "FIT_SAMPLE", 300)
    rng = np.random.default_rng(7)
    parts = [block(rng, b, 1500, 0) for b in range(4)]
    d, res = run(parts, config(per_type=False), tmp_path)
    assert [(s, len(r)) for s, r in d.report["blind_by_split"].items()] == [("test", 2), ("train", 2)], (
        "expected both splits' rates, for the two blind scorers (lm_loglik, bigram)"
    )
    for split, rates in d.report["blind_by_split"].items():
        for name, r in rates.items():
            assert r["before"] > 0.55 and abs(r["after"] - 0.5) < 0.06, (split, name, r)
    kept = res["keep"]
    assert res["weight"][kept].mean() == pytest.approx(1.0, rel=1e-6) and np.isfinite(res["propensity"][kept]).all()
    assert d.report["propensity"]["fitted_on"].startswith("a sample of 300 pairs")
    assert d.report["propensity"]["negative_pairs"] == kept.sum()
