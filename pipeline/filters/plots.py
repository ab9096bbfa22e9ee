"""Histograms of the filter stage's scores, saved as PNG beside the dataset card (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TITLES = {
    "surface_sim": "Surface similarity to the anchor (rapidfuzz ratio)",
    "semantic_sim": "Semantic similarity to the anchor (cosine)",
    "blind_gap_lm_loglik": "LM log-likelihood gap, anchor - negative (> 0: the LM picks the anchor)",
    "blind_gap_bigram": "Bigram fluency gap, anchor - negative (> 0: the proxy picks the anchor)",
}


def save_histograms(histograms: dict[str, dict[str, list[float]]], folder: Path) -> list[str]:
    """One PNG per score, each series an overlaid histogram; returns the file names written, sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, series in sorted(histograms.items()):
        values = [np.asarray(v, dtype=float) for v in series.values()]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        if finite.size == 0:
            continue
        bins = np.linspace(finite.min(), finite.max() + 1e-9, 31)
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        for label, raw in series.items():
            v = np.asarray(raw, dtype=float)
            if v.size:
                ax.hist(v[np.isfinite(v)], bins=list(bins), alpha=0.55, density=True, label=f"{label} ({v.size} rows)")
        ax.set_title(TITLES.get(name, name), fontsize=10)
        ax.set_ylabel("density (each series sums to 1)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", metadata={"Software": None})
        plt.close(fig)
        written.append(f"{name}.png")
    for stale in folder.glob("*.png"):  # only plots of ours: a picture a user put here stays
        if stale.name not in written and (stale.stem in TITLES or stale.stem.startswith("blind_gap_")):
            stale.unlink()
    return written
