"""Report plots (matplotlib, PNG and SVG): robustness heatmap, metric against ε, against the
poisoning rate, training curves, hyperparameter sensitivity, critical-difference diagram."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "robustag",  # stable ids: the same report renders the same SVG
                     "figure.dpi": 120, "savefig.bbox": "tight", "font.size": 9, "axes.grid": True,
                     "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})
METRIC = "ndcg@3"


def save(fig, folder: Path, name: str) -> str:
    """PNG and SVG side by side; returns the PNG's file name."""
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    fig.savefig(folder / f"{safe}.png")
    fig.savefig(folder / f"{safe}.svg", metadata={"Date": None})
    plt.close(fig)
    return f"{safe}.png"


def heatmap(drops: pd.DataFrame, title: str, folder: Path, name: str) -> str:
    """drops: defenses × attacks, relative drop of the metric (0.25 = −25%)."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * drops.shape[1], 0.8 + 0.45 * drops.shape[0]))
    image = ax.imshow(drops.to_numpy() * 100, cmap="Reds", aspect="auto", vmin=0)
    ax.set_xticks(range(drops.shape[1]), drops.columns, rotation=35, ha="right")
    ax.set_yticks(range(drops.shape[0]), drops.index)
    for (i, j), value in np.ndenumerate(drops.to_numpy()):
        ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8,
                color="white" if value > 0.6 * np.nanmax(drops.to_numpy()) else "black")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label=f"relative drop of {METRIC.upper()} (%)")
    ax.set_title(title)
    return save(fig, folder, name)


def curves(data: dict[str, tuple[list, list, list]], xlabel: str, title: str, folder: Path, name: str,
           xscale: str = "linear") -> str:
    """data: label -> (x, mean, std); one line with a band per label."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for label, (x, mean, std) in data.items():
        x, mean, std = map(np.asarray, (x, mean, std))
        ax.plot(x, mean, marker="o", markersize=3, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(METRIC.upper())
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    return save(fig, folder, name)


def critical_difference(ranking: dict, title: str, folder: Path, name: str) -> str:
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(6, 2.2))
    sp.critical_difference_diagram(ranking["ranks"], ranking["nemenyi"], ax=ax)
    ax.set_title(title + f"  (Iman–Davenport p = {ranking['p_value']:.3g}, {ranking['blocks']} blocks)", fontsize=9)
    return save(fig, folder, name)
