"""DAS's frozen inputs, computed once from the training graph: the item blocks' input
transforms (PCA + scale, also what serving applies to a new item), the users' history
means and pooling, the neighbour lists the co-occurrence term samples from, and the
popularity targets of the debias term."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from recsys.models.base import TrainingGraph, csr_order, weighted_row_sums
from recsys.models.content import content_item_matrix
from recsys.models.das.config import DASConfig


@dataclasses.dataclass
class BlockTransform:
    """A frozen block's input transform: ``((x - mean) @ components.T) / scale`` (PCA
    when ``components`` is not None, else ``x / scale``); absent rows become zeros."""

    scale: float
    mean: np.ndarray | None = None
    components: np.ndarray | None = None

    def __call__(self, matrix: np.ndarray, present: np.ndarray) -> np.ndarray:
        x = np.asarray(matrix, dtype=np.float32)
        if self.components is not None:
            x = ((x - self.mean) @ self.components.T).astype(np.float32)
        x = x / self.scale
        x[~np.asarray(present, dtype=bool)] = 0.0
        return x


def fit_block_transforms(
    features: dict[str, tuple[np.ndarray, np.ndarray]], dim: int, seed: int
) -> dict[str, BlockTransform]:
    """Each frozen block reduced to ≤ ``dim`` columns by PCA fit on its present rows, then
    scaled to unit mean norm: a frozen input transform that keeps the towers small."""
    from sklearn.decomposition import PCA

    out = {}
    for name, (matrix, present) in features.items():
        x = np.asarray(matrix, dtype=np.float32)
        present = np.asarray(present, dtype=bool)
        k = min(dim, x.shape[1], max(1, int(present.sum()) - 1))
        transform = BlockTransform(scale=1.0)
        if x.shape[1] > k and present.sum() > k:
            pca = PCA(n_components=k, random_state=seed).fit(x[present])
            transform = BlockTransform(1.0, pca.mean_.astype(np.float32), pca.components_)
        reduced = transform(x, present)
        scale = np.linalg.norm(reduced[present], axis=1).mean() if present.any() else 1.0
        transform.scale = max(float(scale), 1e-8)
        out[name] = transform
    return out


def pca_blocks(features: dict[str, tuple[np.ndarray, np.ndarray]], dim: int, seed: int):
    """``{name: (reduced (N, ≤dim), present)}`` with :func:`fit_block_transforms`."""
    transforms = fit_block_transforms(features, dim, seed)
    return {
        name: (transforms[name](matrix, present), np.asarray(present, dtype=bool))
        for name, (matrix, present) in features.items()
    }


def item_inputs(
    config: DASConfig, graph: TrainingGraph
) -> tuple[dict[str, BlockTransform], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The item tower's frozen inputs: ``(transforms, {block: (rows (I, d_b), present)})``.
    ``semantic_input: content``: one block, the content vectors (PCA'd to ``content_dim``
    if set); blocks: each feature block through :func:`fit_block_transforms`."""
    transforms: dict[str, BlockTransform] = {}
    if config.semantic_input == "content":
        content = content_item_matrix(graph.item_features, {})
        present = np.ones(len(content), dtype=bool)
        if config.content_dim is not None and content.shape[1] > config.content_dim:
            from sklearn.decomposition import PCA

            pca = PCA(n_components=config.content_dim, random_state=0).fit(content)
            transform = BlockTransform(1.0, pca.mean_.astype(np.float32), pca.components_)
            transforms["content"] = transform
            content = transform(content, present)
        return transforms, {"content": (content.astype(np.float32), present)}
    transforms = fit_block_transforms(dict(graph.item_features), config.input_dim, seed=0)
    item_blocks = {
        name: (transforms[name](matrix, present), np.asarray(present, bool))
        for name, (matrix, present) in graph.item_features.items()
    }
    return transforms, item_blocks


def user_inputs(
    config: DASConfig, graph: TrainingGraph, item_blocks
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The user tower's frozen inputs: the recency-weighted means of the user's history
    items' blocks, plus (blocks mode) their side information as one PCA'd block."""
    user_blocks = history_means(item_blocks, graph, config.history_decay)
    if graph.user_features is not None and config.semantic_input != "content":
        user_blocks.update(pca_blocks({"side": graph.user_features}, config.input_dim, 0))
    return user_blocks


def _recency_weights(graph: TrainingGraph, decay: float) -> np.ndarray:
    """``(E,)``: ``decay^k`` for each training pair, k its rank from the user's latest."""
    return decay ** graph.recency_rank().astype(np.float64)


def history_means(item_blocks, graph: TrainingGraph, decay: float = 1.0):
    """Per item modality, the recency-weighted mean (weight ``decay^k`` for the k-th most
    recent item) over each user's training items where present:
    ``{"hist_<m>": ((U, D_m), present (U,))}``."""
    weights = _recency_weights(graph, decay)
    out = {}
    for name, (x, present) in item_blocks.items():
        keep = present[graph.train_items]
        users, items, w = graph.train_users[keep], graph.train_items[keep], weights[keep]
        total = weighted_row_sums(users, items, w, x, graph.n_users)  # (U, D_m)
        mass = np.bincount(users, weights=w, minlength=graph.n_users)
        mean = total / np.maximum(mass, 1e-12)[:, None]
        out[f"hist_{name}"] = (mean.astype(np.float32), mass > 0)
    return out


def history_pooling(graph: TrainingGraph, decay: float) -> Tensor:
    """Sparse ``(U, I)``: row u holds the recency weights ``decay^k`` (k-th most recent
    training item) of u's items, normalised to sum to 1 (empty for users without any)."""
    weights = _recency_weights(graph, decay)
    mass = np.bincount(graph.train_users, weights=weights, minlength=graph.n_users)
    values = weights / mass[graph.train_users]
    index = np.stack([graph.train_users, graph.train_items])
    matrix = torch.sparse_coo_tensor(
        torch.as_tensor(index), torch.as_tensor(values, dtype=torch.float32),
        (graph.n_users, graph.n_items),
    )  # fmt: skip
    return matrix.coalesce()


def neighbor_csr(src: np.ndarray, dst: np.ndarray, n_src: int) -> tuple[Tensor, Tensor]:
    """``(indptr (n_src + 1,), neighbours)``: each ``src`` row's ``dst`` entries, in CSR."""
    order, indptr = csr_order(src, n_src)
    return torch.as_tensor(indptr), torch.as_tensor(dst[order].astype(np.int64))


def standardized_log(counts: np.ndarray) -> Tensor:
    """``(N,)`` float32: ``log(1 + counts)`` standardised (the debias term's target)."""
    x = np.log1p(counts.astype(np.float64))
    return torch.as_tensor((x - x.mean()) / max(x.std(), 1e-8), dtype=torch.float32)
