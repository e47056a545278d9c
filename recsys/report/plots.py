"""Matplotlib figures of a run: curves, code usage, item-embedding projections.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no
global state, no GUI backend: rendering goes through Agg), so the same figures serve the
HTML report (:func:`figure_png`) and notebooks (``IPython.display.Image(figure_png(f))``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from recsys.report.data import group_curves

STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
OTHER_COLOUR = "#c8c8c8"
# tab10 without its grey (kept for "other"), and a dark blue in its place
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#393b79",
    "#bcbd22",
    "#17becf",
)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _grid(n: int, ncols: int, width: float, height: float) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _series_label(column: str, family: str) -> str:
    """``val/ndcg@10`` in panel ``ndcg`` -> ``val@10``; ``train/sid_perplexity_l1`` ->
    ``train l1``; ``train/loss`` -> ``train``."""
    split, name = column.split("/", 1)
    rest = name[len(family) :] if name.startswith(family) else f" {name}"
    return split + (rest if rest.startswith("@") else " " + rest.lstrip("_ ") if rest else "")


def plot_curves(
    curves: pd.DataFrame,
    title: str | None = None,
    ncols: int = 3,
    best_epoch: int | None = None,
) -> Figure:
    """One panel per loss term and per metric family (see :func:`group_curves`); training
    series solid, validation dashed; x is the 1-based epoch.  ``best_epoch`` (1-based, as
    in metrics.json) draws a dotted grey vertical line."""
    groups = group_curves(list(curves.columns))
    with matplotlib.rc_context(STYLE):
        fig, axes = _grid(len(groups), ncols, 4.3, 3.3)
        marker = "o" if len(curves) <= 30 else None
        for ax, (family, columns) in zip(axes, groups.items(), strict=True):
            values = []
            for column in columns:
                series = curves[column].dropna()
                values.append(series.to_numpy())
                style = "-" if column.startswith("train/") else "--"
                ax.plot(
                    series.index,
                    series.to_numpy(),
                    style,
                    marker=marker,
                    markersize=3,
                    label=_series_label(column, family),
                )
            flat = np.concatenate(values) if values else np.zeros(0)
            if "loss" in family and len(flat) and flat.min() > 0 and flat.max() / flat.min() > 50:
                ax.set_yscale("log")
            if best_epoch is not None:
                ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1.2)
            ax.set_title(family)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            # Below the axes, in one row: a legend inside would hide the curves.
            ax.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.2),
                ncol=min(4, len(columns)),
                frameon=False,
                handlelength=2.2,
                columnspacing=1.2,
            )
        if title:
            fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig


def plot_metric_across_runs(
    curves: Mapping[str, pd.DataFrame], column: str = "val/ndcg@10"
) -> Figure | None:
    """``column`` of several runs on one axis, or None when fewer than two runs have it."""
    have = {name: c[column].dropna() for name, c in curves.items() if column in c.columns}
    have = {name: s for name, s in have.items() if len(s)}
    if len(have) < 2:
        return None
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.0, 3.6), layout="constrained")
        ax = fig.subplots()
        for name, series in have.items():
            ax.plot(series.index, series.to_numpy(), label=name)
        ax.set_title(f"{column} by run")
        ax.set_xlabel("epoch")
        ax.set_ylabel(column)
        ax.legend(loc="best", frameon=False)
    return fig


def plot_code_usage(
    codes: np.ndarray, codebook_sizes: Sequence[int], title: str | None = None
) -> Figure:
    """Per level: items per code, codes sorted from most to least used (unused codes at
    zero, the uniform share dotted); last panel: how many items share each code tuple
    before disambiguation."""
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    with matplotlib.rc_context(STYLE):
        fig, axes = _grid(levels + 1, 4, 3.5, 3.0)
        for level in range(levels):
            ax, size = axes[level], int(codebook_sizes[level])
            counts = np.sort(np.bincount(codes[:, level], minlength=size))[::-1]
            used = int((counts > 0).sum())
            p = counts[counts > 0] / n
            perplexity = math.exp(float(-(p * np.log(p)).sum()))
            ax.bar(np.arange(size), counts, width=1.0, color="#4c72b0", linewidth=0)
            ax.axhline(n / size, color="black", linestyle=":", linewidth=1, label="uniform")
            ax.set_title(f"level {level}: {used}/{size} used, ppl {perplexity:.1f}")
            ax.set_xlabel("code (sorted by use)")
            ax.set_ylabel("items per code")
            ax.legend(loc="upper right", frameon=False)
        ax = axes[levels]
        _, tuple_counts = np.unique(codes, axis=0, return_counts=True)
        sizes, freq = np.unique(tuple_counts, return_counts=True)
        colliding = int(tuple_counts[tuple_counts > 1].sum())
        ax.bar([str(s) for s in sizes], freq * sizes, color="#dd8452")
        ax.set_title(f"collisions: {colliding} of {n} items")
        ax.set_xlabel("items sharing the code tuple")
        ax.set_ylabel("items")
        if title:
            fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig


def project(
    embeddings: np.ndarray, method: str = "pca", seed: int = 0
) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates of ``embeddings`` ``(N, D)`` and the two axis labels."""
    x = np.asarray(embeddings, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full", random_state=seed)
        xy = pca.fit_transform(x)
        ratio = pca.explained_variance_ratio_
        return xy, (f"PC 1 ({100 * ratio[0]:.1f}% var.)", f"PC 2 ({100 * ratio[1]:.1f}% var.)")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
        return xy.fit_transform(x), ("t-SNE 1", "t-SNE 2")
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def plot_projection(
    xy: np.ndarray,
    colour: np.ndarray,
    categorical: bool,
    colour_label: str,
    axis_labels: tuple[str, str] = ("", ""),
    title: str | None = None,
    top: int = 10,
) -> Figure:
    """Scatter of ``xy`` ``(N, 2)``.  Categorical ``colour``: the ``top`` most frequent
    values in distinct colours (legend with counts), the rest grey; otherwise a continuous
    colour scale with a colour bar."""
    xy = np.asarray(xy)
    size = 5 if len(xy) > 2000 else 12
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 5.6), layout="constrained")
        ax = fig.subplots()
        if categorical:
            values = pd.Series(colour, dtype=object).fillna("(none)").astype(str).to_numpy()
            counts = pd.Series(values).value_counts(sort=True)
            counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
            leading = list(counts.index[:top])
            rest = ~np.isin(values, leading)
            if rest.any():
                ax.scatter(
                    *xy[rest].T,
                    s=size,
                    c=OTHER_COLOUR,
                    linewidths=0,
                    label=f"other ({int(rest.sum())})",
                )
            for n, value in enumerate(leading):
                mask = values == value
                ax.scatter(
                    *xy[mask].T,
                    s=size,
                    color=PALETTE[n % len(PALETTE)],
                    linewidths=0,
                    alpha=0.85,
                    label=f"{value} ({int(mask.sum())})",
                )
            ax.legend(
                title=colour_label,
                loc="center left",
                bbox_to_anchor=(1.01, 0.5),
                frameon=False,
                markerscale=2.5 if size < 10 else 1.5,
            )
        else:
            points = ax.scatter(
                *xy.T,
                s=size,
                c=np.asarray(colour, dtype=float),
                cmap="viridis",
                linewidths=0,
                alpha=0.85,
            )
            fig.colorbar(points, ax=ax, label=colour_label)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        if title:
            ax.set_title(title)
    return fig
