"""The recommender interface every model implements, and the model registry.

A model is an ``nn.Module`` that scores users against items by a dot product of final
representations, so that evaluation, export, FAISS indexing and serving need only the
two embedding matrices (saved in the run folder) and never the training code.

To add a model: write one module with a config (a :class:`StrictModel` with a ``kind``
literal) and a class decorated with :func:`register_model`, name the module in
``BUILTIN_MODELS`` (or import it before training), and add a YAML file under
``configs/``.  Built-in modules are imported on first use, so that importing
``recsys.models`` stays cheap (torch-geometric alone takes seconds to import).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.config import StrictModel
from recsys.errors import ConfigError


@dataclass
class TrainingGraph:
    """What a model may know at construction: sizes, the training interactions and,
    for content models, the frozen item features.

    train_users, train_items: ``(E,)`` int64 indices of training pairs, in per-user
        chronological order (a user's last pair is their most recent).
    item_features: modality → (matrix (n_items, D_m), present (n_items,)), or None.
    """

    n_users: int
    n_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    item_features: Any = None
    features_config: Any = None  # the FeaturesConfig that built item_features
    user_features: Any = None  # (matrix (n_users, D), present (n_users,)) side information
    test_item_counts: np.ndarray | None = None  # only for the leaky oracle reference
    item_codes: np.ndarray | None = None  # (n_items, L) semantic IDs taken from another run

    def recency_rank(self) -> np.ndarray:
        """``(E,)``: 0 for each user's most recent training pair, 1 for the one before..."""
        order = np.arange(len(self.train_users))
        frame = pd.DataFrame({"u": self.train_users, "o": order})
        return frame.groupby("u")["o"].rank(ascending=False, method="first").to_numpy(int) - 1

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.train_items, minlength=self.n_items)

    def user_counts(self) -> np.ndarray:
        return np.bincount(self.train_users, minlength=self.n_users)


def warm_mask(graph: TrainingGraph) -> Tensor:
    """``(n_items,)`` float: 1 for items with a training interaction, 0 for cold ones."""
    return torch.as_tensor(graph.item_counts() > 0, dtype=torch.float32)


class Recommender(nn.Module):
    """Base class: ``embeddings()`` gives ``(n_users, D)`` and ``(n_items, D)``; score = dot.

    ``needs_item_features``: the runner builds the frozen item features (the config's
    ``features`` section, or the dataset's preset) and passes them in the graph.
    """

    trainable: bool = True
    needs_item_features: bool = False
    needs_user_features: bool = False

    def embeddings(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def semantic_ids(self) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """``{"items"|"users": (semantic IDs (N, L+1), stats)}`` for models that have them."""
        return {}

    def use_history(self, users: np.ndarray, items: np.ndarray) -> bool:
        """Rebuild user state derived from interaction history (not from training) out
        of these pairs, in per-user chronological order.  The runner calls it with
        train + valid before scoring test, as the protocol treats valid as known history
        then.  Returns True when the user representations changed."""
        return False

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (0-based), e.g. to switch a training phase;
        whatever it changes must live in the state dict so that resuming restores it."""

    def after_epoch_steps(self) -> dict[str, Tensor]:
        """Called after each epoch's last training step, before that epoch's validation
        (e.g. to repair state that the ranking will read); state it changes must live in
        the state dict, as for :meth:`on_train_epoch_start`. Returns ``{parameter name
        (as in named_parameters): boolean mask of the entries it set}`` for parameters it
        changed outside the optimiser, so that weight averaging (``trainer.ema_decay``)
        restarts those entries from their new values instead of averaging them away."""
        return {}

    def epoch_metrics(self) -> dict[str, float]:
        """Scalars logged at the end of each training epoch (e.g. codebook health)."""
        return {}

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables whose training gradients are sparse (their rows read by a
        step only; ``sparse_updates``), updated lazily by the optimiser
        (:mod:`recsys.train.optim`)."""
        return []

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms for one batch; ``"loss"`` is the total that is optimised.

        batch: ``users (B,)``, ``pos_items (B,)``, and ``neg_items (B, N)`` when negatives
        are sampled.
        """
        raise NotImplementedError


@dataclass
class ModelSpec:
    config_cls: type[StrictModel]
    build: Callable[[Any, TrainingGraph], Recommender]


MODEL_REGISTRY: dict[str, ModelSpec] = {}
BUILTIN_MODELS = {
    "popularity": "recsys.models.popularity",
    "mf": "recsys.models.mf",
    "lightgcn": "recsys.models.lightgcn",
    "content": "recsys.models.content",
    "two_stage": "recsys.models.two_stage",
    "das": "recsys.models.das.model",
}


def model_kinds() -> list[str]:
    return sorted(set(MODEL_REGISTRY) | set(BUILTIN_MODELS))


def model_spec(kind: str) -> ModelSpec:
    """The registered spec of ``kind``, importing its built-in module on first use."""
    if kind not in MODEL_REGISTRY and kind in BUILTIN_MODELS:
        importlib.import_module(BUILTIN_MODELS[kind])
    if kind not in MODEL_REGISTRY:
        raise ConfigError(f"unknown model kind {kind!r}; known: {model_kinds()}")
    return MODEL_REGISTRY[kind]


def register_model(kind: str, config_cls: type[StrictModel]):
    """Class decorator: ``cls(config, graph)`` builds the model for ``kind``."""

    def wrap(cls: type[Recommender]) -> type[Recommender]:
        MODEL_REGISTRY[kind] = ModelSpec(config_cls, cls)
        return cls

    return wrap


def build_model(config: StrictModel, graph: TrainingGraph) -> Recommender:
    return model_spec(config.kind).build(config, graph)  # type: ignore[attr-defined]


def weighted_row_sums(
    pair_rows: np.ndarray,
    pair_columns: np.ndarray,
    weights: np.ndarray,
    x: np.ndarray,
    n_rows: int,
) -> np.ndarray:
    """``out[r] = Σ weights[k] · x[pair_columns[k]]`` over the pairs ``k`` with
    ``pair_rows[k] == r`` → ``(n_rows, D)`` float64, as adding the pairs one by one in their
    order would (``np.add.at``, bit for bit), through one sparse product instead of a
    ``(pairs, D)`` temporary (users' history pools: 14 GB for a million users' 128-wide
    content)."""
    order, indptr = csr_order(pair_rows, n_rows)
    pairs = sp.csr_matrix((weights[order], pair_columns[order], indptr), shape=(n_rows, len(x)))
    return pairs @ np.asarray(x, dtype=np.float64)


def csr_order(rows_: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSR layout of entries in rows ``rows_ (E,)``: ``order (E,)``, the entries grouped
    by row (each row's in their given order), and ``indptr (n_rows + 1,)``."""
    order = np.argsort(rows_, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows_, minlength=n_rows), out=indptr[1:])
    return order, indptr


def rows(table: Tensor, index: Tensor, sparse: bool = False) -> Tensor:
    """``table[index]`` for a row table ``(N, D)`` and an index of any shape ``S`` →
    ``(*S, D)``, through ``index_select``: the same values, and a backward (index_add) about
    twice as fast as advanced indexing's (index_put) under deterministic algorithms, and
    through scipy (:class:`_RowGather`) faster again on few CPU threads.
    ``sparse``: through ``F.embedding(sparse=True)`` instead, so that ``table``'s gradient
    is sparse (the rows read only), for lazily updated tables."""
    if sparse:
        return F.embedding(index, table, sparse=True)
    flat = index.reshape(-1)
    if _scipy_backward(table):
        picked = _RowGather.apply(table, flat.contiguous())
    else:
        picked = table.index_select(0, flat)
    return picked.view(*index.shape, *table.shape[1:])


# On this few threads scipy's CSR kernel multiplies a fixed sparse matrix by a dense one
# about 2.5x faster than torch's CPU CSR kernel (bench/speed.py, Beauty: 5.3 vs 13 ms at one
# thread, 6.0 vs 8.7 at two), with the same sums in the same order (bitwise equal products);
# with more threads torch's parallel kernel takes over.
SCIPY_MAX_THREADS = 2


def scipy_kernels() -> bool:
    """Whether CPU products go through scipy's kernels (few torch threads)."""
    return torch.get_num_threads() <= SCIPY_MAX_THREADS


def _scipy_backward(table: Tensor) -> bool:
    """Whether a gather from ``table`` scatters its gradient back through scipy: a dense
    float32 CPU gradient is wanted, on few threads."""
    return (
        table.requires_grad
        and torch.is_grad_enabled()
        and table.device.type == "cpu"
        and table.dtype == torch.float32
        and scipy_kernels()
    )


def _scatter_rows(n_rows: int, index: Tensor, weights: np.ndarray, grad: Tensor) -> Tensor:
    """``(n_rows, D)``: row ``index[n, k]`` gets ``Σ weights[n, k] · grad[n]`` — the ``(N, W)``
    entries read as a CSR ``(N, n_rows)`` matrix as they stand (index pointer ``0, W, 2W,
    …``: no sort, no conversion) and multiplied transposed by ``grad (N, D)``: scipy adds
    each row's entries in entry order, the order torch's ``index_add`` and embedding
    backwards add them, in C without their per-row dispatch."""
    import scipy.sparse as sp  # here: serving imports this module, never a backward

    n, width = index.shape
    entries = sp.csr_matrix(
        (weights.ravel(), index.numpy().ravel(), np.arange(0, n * width + 1, width)),
        shape=(n, n_rows),
    )
    return torch.from_numpy(entries.T @ grad.contiguous().numpy())


class _RowGather(torch.autograd.Function):
    """``table.index_select(0, index)`` whose backward scatters through scipy
    (:func:`_scatter_rows` with unit weights): the same sums in the same order as
    ``index_add`` (bitwise equal) without torch's one dispatched row add per index (a Beauty
    DAS epoch, the two alternated in one process: 2.11 s against 2.35 s)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n_rows, ctx.index = table.shape[0], index
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ones = np.ones(len(ctx.index), dtype=np.float32)
        return _scatter_rows(ctx.n_rows, ctx.index[:, None], ones, grad), None


class _WeightedBagSum(torch.autograd.Function):
    """``Σ_k w[n, k] table[items[n, k]]`` (``embedding_bag``'s forward) whose backward scatters
    the bags' gradients through scipy: the ``(N, W)`` bags are a CSR ``(N, rows)`` matrix as
    they stand (no sort, no conversion), and ``matrixᵀ @ grad`` adds each row's entries in
    bag order, the order ``embedding_bag``'s own backward adds them after its sort, about 6×
    faster on one thread (12 vs 2 ms at Beauty's 8,192 × 20 bags), equal up to rounding
    (its ``axpy`` may fuse the multiply-add)."""

    @staticmethod
    def forward(ctx, table: Tensor, items: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
        ctx.n_rows, ctx.items, ctx.weights = table.shape[0], items, weights
        return F.embedding_bag(items, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        weights = ctx.weights.numpy()
        return _scatter_rows(ctx.n_rows, ctx.items, weights, grad), None, None


def weighted_bag_sum(items: Tensor, table: Tensor, weights: Tensor, sparse: bool = False) -> Tensor:
    """items, weights ``(N, W)`` (no gradient), table ``(R, D)`` → ``(N, D)``:
    ``Σ_k weights[n, k] · table[items[n, k]]`` without materialising ``(N, W, D)``
    (``F.embedding_bag``, whose backward goes through scipy on this few CPU threads;
    ``sparse``: a sparse gradient for ``table``, the rows read only)."""
    if not sparse and not weights.requires_grad and _scipy_backward(table):
        return _WeightedBagSum.apply(table, items.contiguous(), weights.contiguous())
    return F.embedding_bag(items, table, per_sample_weights=weights, mode="sum", sparse=sparse)


def find_sorted(keys: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of ``wanted (B,)`` in the ascending ``keys (E,)`` and whether each is
    there: ``(at, found)``, ``at`` clamped to a valid index (any, where not found)."""
    if len(keys) == 0:
        return torch.zeros_like(wanted), torch.zeros_like(wanted, dtype=torch.bool)
    at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
    return at, keys[at] == wanted


def dot_scores(user_emb: Tensor, item_emb: Tensor) -> Callable[[Tensor], Tensor]:
    """A score function ``users (B,) → (B, n_items)`` over fixed embeddings."""

    def score(users: Tensor) -> Tensor:
        return user_emb[users] @ item_emb.T

    score.fresh_scores = True  # type: ignore[attr-defined]  # a new tensor: rankers may mask it in place
    return score


@torch.no_grad()
def frozen_embeddings(model: Recommender) -> tuple[Tensor, Tensor]:
    was_training = model.training
    model.eval()
    user, item = model.embeddings()
    model.train(was_training)
    return user.detach().float().cpu(), item.detach().float().cpu()
