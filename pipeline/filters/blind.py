"""Blind (text-only) scorers and balancing in the spirit of SugarCrepe's adversarial refinement.

SugarCrepe (Hsieh et al. 2023, "SugarCrepe: Fixing Hackable Benchmarks for Vision-Language
Compositionality") found that older hard-negative sets could be solved without the image: a text-only
model picks the true caption because generated negatives are less plausible or less grammatical. Its
fix: score caption and negative with blind models, bin the score gaps, and keep as many rows whose gap
favours the caption as rows whose gap favours the negative in every bin, so a blind model is right half
the time. Here the blind scorers are the mean token log-probability under a causal LM (the embedded
SmolLM2 by default) and a grammaticality proxy, a word-bigram LM fitted on the run's own captions
(cross-fitted by group, so no caption is scored by a model that saw it).

Gap convention: ``gap = score(anchor) - score(candidate)``; a blind scorer "picks the anchor" when gap > 0.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.filters.words import Words


def pick_rate(gaps: np.ndarray) -> float:
    """Share of rows where a blind scorer prefers the anchor (ties count half); NaN when empty.

    >>> pick_rate(np.array([0.5, -1.0, 0.0, 2.0]))
    0.625
    """
    if len(gaps) == 0:
        return float("nan")
    return float((gaps > 0).mean() + 0.5 * (gaps == 0).mean())


def _fold_of(groups: list[str], folds: int) -> np.ndarray:
    """(N,) fold of each row from a hash of its group (each distinct group hashed once)."""
    codes, uniq = pd.factorize(np.asarray(groups, dtype=object))
    fold = np.array([int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) % folds for g in uniq], dtype=np.int64)
    return fold[codes]


def bigram_logprob(
    anchors: list[str],
    candidates: list[str],
    groups: list[str],
    folds: int = 5,
    k: float = 0.1,
    words: Words | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean token log-prob of each anchor and candidate under an add-k word-bigram LM of the anchors, cross-fitted.

    Words are lower-cased with ASCII punctuation removed; the end of a text is a token (so a text's
    last word is scored as an ending, as its first word is scored as a beginning).

    Rows are split into ``folds`` by a hash of their group; the texts of fold f are scored by a model
    counted on the distinct anchors of the other folds. Returns two arrays of shape (N,).

    ``words``: the texts already split (:class:`~pipeline.filters.words.Words` of a superset of the anchors
    and candidates), when the caller has them.

    >>> groups = [f"g{i}" for i in range(6)]  # folds 0 0 0 0 1 1
    >>> a, c = bigram_logprob(["a dog runs on grass"] * 6, ["grass dog on runs a"] * 3 + ["a dog runs on grass"] * 3,
    ...                       groups, folds=2)
    >>> bool(a[0] > c[0]), bool(a[5] == c[5])  # a shuffled candidate is less fluent; a copy scores the same
    (True, True)
    """
    words = Words(list(dict.fromkeys([*anchors, *candidates]))) if words is None else words
    where, n_texts = words.index, len(words.texts)
    ids, text_of, n_ids = words.normalised()  # (T,) token ids, 0 closing each text; (T,) the text of each token
    prev = np.concatenate([[0], ids[:-1]])  # (T,) the token before each token; text starts follow a boundary
    keys = prev * n_ids + ids  # (T,) bigram id; every token, the closing boundary included, is predicted once
    a_rows = np.fromiter(map(where.__getitem__, anchors), dtype=np.int64, count=len(anchors))  # (N,) text of each
    c_rows = np.fromiter(map(where.__getitem__, candidates), dtype=np.int64, count=len(candidates))  # (N,)
    used = np.zeros(n_texts, dtype=bool)
    used[a_rows] = used[c_rows] = True  # the texts scored
    v = int((np.bincount(ids[used[text_of]], minlength=n_ids) > 0).sum())  # vocabulary of these texts (smoothing)
    # A text's fold is its row's; a text that is an anchor of one group and a candidate of another takes its
    # anchor's fold, so it is never scored by a model that counted it.
    row_fold = _fold_of(list(groups), folds)  # (N,)
    fold_of_text = np.full(n_texts, -1)
    fold_of_text[c_rows] = row_fold
    fold_of_text[a_rows] = row_fold
    # Counts come from the distinct anchors only, split by fold: model f = all folds - fold f.
    fit = np.zeros(n_texts, dtype=bool)
    fit[a_rows] = True
    fit_tok = fit[text_of]
    inv, ukeys = pd.factorize(keys[fit_tok])  # (fit tokens,) number of each distinct bigram; ukeys (U,)
    tok_fold = fold_of_text[text_of[fit_tok]]
    pair_counts = np.bincount(inv * folds + tok_fold, minlength=len(ukeys) * folds).reshape(len(ukeys), folds)  # (U, F)
    ctx_counts = np.bincount(prev[fit_tok] * folds + tok_fold, minlength=n_ids * folds).reshape(n_ids, folds)  # (V, F)
    pair_total, ctx_total = pair_counts.sum(1), ctx_counts.sum(1)  # (U,), (V,) every fold

    tok = np.flatnonzero(used[text_of])  # (T',) tokens of the texts scored, all in one pass
    t_of, kt, pt = text_of[tok], keys[tok], prev[tok]
    f = fold_of_text[t_of]
    pos = pd.Index(ukeys).get_indexer(kt)  # (T',) each token's bigram among the counted ones, -1 when never seen
    c = np.where(pos >= 0, pair_total[pos] - pair_counts[pos, f], 0)  # count outside the fold
    ctx = ctx_total[pt] - ctx_counts[pt, f]
    logp = np.log((c + k) / (ctx + k * v))  # (T',)
    per_text = np.bincount(t_of, weights=logp, minlength=n_texts) / np.maximum(np.bincount(t_of, minlength=n_texts), 1)
    return per_text[a_rows].astype(np.float32), per_text[c_rows].astype(np.float32)


def lm_mean_logprob(texts: list[str], model, tokenizer, batch_size: int = 64) -> np.ndarray:
    """Mean log-probability per token of each text under a causal LM, after a document-start token; (N,)."""
    import torch

    start = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if start is None or start == tokenizer.unk_token_id:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = np.zeros(len(texts), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    for b in range(0, len(texts), batch_size):
        idx = order[b : b + batch_size]
        ids = [[start, *tokenizer(texts[i], add_special_tokens=False).input_ids] for i in idx]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [start] * (width - len(x)) for x in ids])  # (B, T) right-padded
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])  # (B, T)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()  # (B, T, V)
        logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, T-1)
        m = mask[:, 1:].float()
        out[idx] = ((logp * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
    return out


def gap_edges(gaps: np.ndarray, bins: int) -> list[np.ndarray]:
    """Per scorer, the ``bins - 1`` quantiles of |gap| that cut a stratum's rows into ``bins`` bins; gaps (N, S)."""
    return [
        np.quantile(np.abs(g), np.linspace(0, 1, bins + 1)[1:-1]) if bins > 1 and len(g) else np.zeros(0)
        for g in np.asarray(gaps, dtype=np.float64).T
    ]


def cell_codes(gaps: np.ndarray, edges: list[np.ndarray], bins: int) -> np.ndarray:
    """(N,) one number per cell of signed |gap| bins (a digit per scorer, base ``2 * bins + 1``): a cell's mirror
    (every gap negated) is ``mirror_code(code)``."""
    code = np.zeros(len(gaps), dtype=np.int64)
    for j, (g, e) in enumerate(zip(np.asarray(gaps, dtype=np.float64).T, edges)):
        signed = np.sign(g).astype(np.int64) * (np.searchsorted(e, np.abs(g), side="right") + 1)  # in [-bins, bins]
        code += (signed + bins) * (2 * bins + 1) ** j
    return code


def mirror_code(code: np.ndarray, bins: int, scorers: int) -> np.ndarray:
    """The cell with every digit's sign flipped: digit d becomes 2 * bins - d."""
    return (2 * bins + 1) ** scorers - 1 - np.asarray(code, dtype=np.int64)


def cell_quotas(cells: np.ndarray, counts: np.ndarray, bins: int, scorers: int, max_rate: float) -> np.ndarray:
    """Rows to keep in each cell (``cells`` distinct codes, ``counts`` rows in each): as many as its mirror holds,
    or up to ``max_rate / (1 - max_rate)`` times that; a cell that is its own mirror keeps every row."""
    if not len(cells):
        return np.zeros(0, np.int64)
    mirror = mirror_code(cells, bins, scorers)
    at = np.minimum(np.searchsorted(cells, mirror), len(cells) - 1)
    other = np.where(cells[at] == mirror, counts[at], 0)  # (C,) rows in each cell's mirror
    ratio = max_rate / (1 - max_rate)
    quota = np.minimum(counts, np.maximum(other, (ratio * other + 1e-9).astype(np.int64)))
    return np.where(mirror == cells, counts, quota)


def key_rank(keys: list[str]) -> np.ndarray:
    """(N,) uint64: the first 8 bytes of each key's sha256, big-endian (their order is the digests' order)."""
    digest = b"".join(hashlib.sha256(k.encode()).digest()[:8] for k in keys)
    return np.frombuffer(digest, dtype=">u8").astype(np.uint64) if keys else np.zeros(0, np.uint64)


def balance_mask(
    gaps: np.ndarray, strata: list[str], keys: list[str], bins: int = 3, max_rate: float = 0.5
) -> np.ndarray:
    """Keep mask (N,) such that, within each stratum, every cell of signed |gap| bins holds about as many rows
    as its mirror cell (all gaps negated): each blind scorer then prefers the anchor for about half the rows.

    ``max_rate`` = 0.5 keeps exactly as many rows in a cell as in its mirror; above 0.5 the fuller side may
    keep up to ``max_rate / (1 - max_rate)`` times the other, which bounds every scorer's pick rate by
    ``[1 - max_rate, max_rate]`` and keeps more rows. ``gaps`` is (N, S) for S scorers; within a cell the
    rows kept are those with the smallest sha256 of their ``keys`` (deterministic, unrelated to the scores).
    This is the in-memory form; :mod:`pipeline.filters.stage` makes the same decision out of core from the
    same pieces (:func:`gap_edges`, :func:`cell_codes`, :func:`cell_quotas`, :func:`key_rank`).

    >>> g = np.array([[1.0], [2.0], [-1.5], [3.0]])
    >>> balance_mask(g, ["t"] * 4, ["a", "b", "c", "d"], bins=1).sum()
    np.int64(2)
    """
    if not len(keys):
        return np.zeros(0, dtype=bool)
    gaps = np.asarray(gaps, dtype=np.float64).reshape(len(keys), -1)
    keep = np.zeros(len(keys), dtype=bool)
    rank, strata_arr = key_rank(list(keys)), np.asarray(strata)
    for s in np.unique(strata_arr):
        rows = np.flatnonzero(strata_arr == s)
        code = cell_codes(gaps[rows], gap_edges(gaps[rows], bins), bins)
        cells, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
        quota = cell_quotas(cells, counts, bins, gaps.shape[1], max_rate)
        order = np.lexsort((rows, rank[rows], inverse))  # by cell, then by key hash
        start = np.searchsorted(inverse[order], np.arange(len(cells)))  # first sorted row of each cell
        place = np.empty(len(rows), dtype=np.int64)
        place[order] = np.arange(len(rows)) - start[inverse[order]]  # each row's place in its cell
        keep[rows[place < quota[inverse]]] = True
    return keep
