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
import string

import numpy as np

_SPACE_PUNCT = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))  # UTF-8 safe: no
# byte of a multi-byte character is ASCII


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
    fold = {g: int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) % folds for g in dict.fromkeys(groups)}
    return np.fromiter((fold[g] for g in groups), dtype=np.int64, count=len(groups))


def bigram_logprob(anchors: list[str], candidates: list[str], groups: list[str], folds: int = 5,
                   k: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Mean token log-prob of each anchor and candidate under an add-k word-bigram LM of the anchors, cross-fitted.

    Words are lower-cased with ASCII punctuation removed; the end of a text is a token (so a text's
    last word is scored as an ending, as its first word is scored as a beginning).

    Rows are split into ``folds`` by a hash of their group; the texts of fold f are scored by a model
    counted on the distinct anchors of the other folds. Returns two arrays of shape (N,).

    >>> groups = [f"g{i}" for i in range(6)]  # folds 0 0 0 0 1 1
    >>> a, c = bigram_logprob(["a dog runs on grass"] * 6, ["grass dog on runs a"] * 3 + ["a dog runs on grass"] * 3,
    ...                       groups, folds=2)
    >>> bool(a[0] > c[0]), bool(a[5] == c[5])  # a shuffled candidate is less fluent; a copy scores the same
    (True, True)
    """
    uniq = list(dict.fromkeys([*anchors, *candidates]))  # anchors repeat once per row of their group
    where = {t: i for i, t in enumerate(uniq)}
    # Words: lower case, ASCII punctuation dropped, split on whitespace, in one pass over all texts
    # (C-level str/bytes methods); "\x01" is a word of its own that closes each text.
    joined = ("\x01".join(uniq).lower() + "\x01").encode("utf-8").translate(_SPACE_PUNCT)
    words = joined.replace(b"\x01", b" \x01 ").decode("utf-8").split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["\x01", *words]))}  # "\x01" -> 0
    ids = np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=len(words))  # (T,) 0 = boundary
    v = len(vocab)
    prev = np.concatenate([[0], ids[:-1]])  # (T,) the token before each token; text starts follow a boundary
    text_of = np.concatenate([[0], np.cumsum(ids == 0)[:-1]])  # (T,) which unique text each token closes
    keys = prev * v + ids  # (T,) bigram id; every token, the closing boundary included, is predicted once
    row_fold = _fold_of(list(groups), folds)  # (N,)
    fold_u = np.full(len(uniq), -1)
    fold_u[[where[a] for a in anchors]] = row_fold  # anchors: their group's fold
    # Counts come from the distinct anchors only, split by fold: model f = all folds - fold f.
    fit = np.zeros(len(uniq), dtype=bool)
    fit[[where[a] for a in anchors]] = True
    fit_tok = fit[text_of]
    ukeys, inv = np.unique(keys[fit_tok], return_inverse=True)
    tok_fold = fold_u[text_of][fit_tok]
    pair_counts = np.bincount(inv * folds + tok_fold, minlength=len(ukeys) * folds).reshape(len(ukeys), folds)  # (U, F)
    ctx_counts = np.bincount(prev[fit_tok] * folds + tok_fold, minlength=v * folds).reshape(v, folds)  # (V, F)

    pair_total, ctx_total = pair_counts.sum(1), ctx_counts.sum(1)  # (U,), (V,) every fold

    def score(texts: list[str], text_folds: np.ndarray) -> np.ndarray:
        rows = np.fromiter(map(where.__getitem__, texts), dtype=np.int64, count=len(texts))
        f_of_text = np.full(len(uniq), -1)
        f_of_text[rows] = text_folds  # a text shared by rows of one group has one fold
        chosen = np.zeros(len(uniq), dtype=bool)
        chosen[rows] = True
        tok = np.flatnonzero(chosen[text_of])  # tokens of these texts
        f, kt, pt = f_of_text[text_of[tok]], keys[tok], prev[tok]
        c = np.zeros(len(tok))
        if len(ukeys):
            pos = np.minimum(np.searchsorted(ukeys, kt), len(ukeys) - 1)
            c = np.where(ukeys[pos] == kt, pair_total[pos] - pair_counts[pos, f], 0)  # count outside the fold
        ctx = ctx_total[pt] - ctx_counts[pt, f]
        logp = np.log((c + k) / (ctx + k * v))  # (tokens,)
        sums = np.bincount(text_of[tok], weights=logp, minlength=len(uniq))
        per_text = sums / np.maximum(np.bincount(text_of[tok], minlength=len(uniq)), 1)
        return per_text[rows].astype(np.float32)

    return score(list(anchors), row_fold), score(list(candidates), row_fold)


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


def _cells(gaps: np.ndarray, bins: int) -> list[tuple[int, ...]]:
    """Signed bin of |gap| per scorer: a cell's mirror (every gap negated) is the negated tuple."""
    cols = []
    for g in gaps.T:  # one scorer at a time, gaps (N,)
        edges = np.quantile(np.abs(g), np.linspace(0, 1, bins + 1)[1:-1]) if bins > 1 else np.zeros(0)
        cols.append(np.sign(g).astype(int) * (np.searchsorted(edges, np.abs(g), side="right") + 1))
    return [tuple(c) for c in np.column_stack(cols).tolist()]


def balance_mask(gaps: np.ndarray, strata: list[str], keys: list[str], bins: int = 3, max_rate: float = 0.5) -> np.ndarray:
    """Keep mask (N,) such that, within each stratum, every cell of signed |gap| bins holds about as many rows
    as its mirror cell (all gaps negated): each blind scorer then prefers the anchor for about half the rows.

    ``max_rate`` = 0.5 keeps exactly as many rows in a cell as in its mirror; above 0.5 the fuller side may
    keep up to ``max_rate / (1 - max_rate)`` times the other, which bounds every scorer's pick rate by
    ``[1 - max_rate, max_rate]`` and keeps more rows. ``gaps`` is (N, S) for S scorers; within a cell the
    rows kept are those with the smallest sha256 of their ``keys`` (deterministic, unrelated to the scores).

    >>> g = np.array([[1.0], [2.0], [3.0], [-1.5]])
    >>> balance_mask(g, ["t"] * 4, ["a", "b", "c", "d"], bins=1).sum()
    np.int64(2)
    """
    if not len(keys):
        return np.zeros(0, dtype=bool)
    gaps = np.asarray(gaps, dtype=np.float64).reshape(len(keys), -1)
    keep = np.zeros(len(keys), dtype=bool)
    rank = np.array([hashlib.sha256(k.encode()).hexdigest() for k in keys])
    strata_arr = np.asarray(strata)
    for s in np.unique(strata_arr):
        rows = np.flatnonzero(strata_arr == s)
        by_cell: dict[tuple[int, ...], list[int]] = {}
        for r, cell in zip(rows, _cells(gaps[rows], bins)):
            by_cell.setdefault(cell, []).append(r)
        ratio = max_rate / (1 - max_rate)
        for cell, members in by_cell.items():
            mirror = tuple(-c for c in cell)
            other = len(by_cell.get(mirror, []))
            n = len(members) if mirror == cell else min(len(members), max(other, int(ratio * other + 1e-9)))
            chosen = sorted(members, key=lambda r: rank[r])[:n]
            keep[chosen] = True
    return keep
