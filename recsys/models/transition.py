"""A next-item transition block (FPMC / Fossil-style) for models scored by a dot product.

A user's query gets ``t_u = Σ_k w_k P[j_k]`` over the last ``window`` items ``j_0, j_1, …``
of their history (``w_k ∝ decay^k``, most recent first, normalised to sum to 1) and an
item gets ``Q[i]``: ``t_u · Q_i`` scores "what follows these items", which a symmetric
history term (``Σ_k w_k c_{j_k} · c_i``) cannot express. Trained the way it is used: a
training pair's context is the items its user had **before** it (never the item itself
or later ones), and scoring uses the items before the held-out one (the whole training
history, or train + valid when test is scored). ``P`` and ``Q`` are ID embeddings, so an
item without training interactions contributes nothing on either side (its rows are
masked), and a cold item's transition score is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from recsys.config import StrictModel
from recsys.models.base import (
    TrainingGraph,
    csr_order,
    find_sorted,
    rows,
    warm_mask,
    weighted_bag_sum,
)


class TransitionFields(StrictModel):
    """The block's settings, shared by the configs of the models that can carry it."""

    transition_dim: int = Field(
        default=0,
        ge=0,
        description="width of a next-item transition block (FPMC-style,"
        " recsys.models.transition): the user's query adds the decayed mean of source"
        " embeddings of their last transition_window items, the item its target"
        " embedding, trained on each pair's preceding items; ID-based, so 0 for items"
        " without training interactions. 0: no block",
    )
    transition_window: int = Field(default=20, ge=1, description="items in that context")
    transition_decay: float = Field(
        default=0.5, gt=0, le=1, description="recency weight decay^k within that context"
    )


def context_weights(window: int, decay: float) -> np.ndarray:
    """``(window + 1, window)`` float32: row ``a``, the weights of a context of ``a`` items
    (``decay^k`` for the k-th most recent, normalised to sum to 1; row 0 all 0): a
    context's weights depend on how many items it holds, nothing else."""
    k = np.arange(window)
    valid = k[None, :] < np.arange(window + 1)[:, None]
    weights = np.where(valid, float(decay) ** k[None, :], 0.0)
    mass = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, mass, out=np.zeros_like(weights), where=mass > 0).astype(np.float32)


def preceding_items(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    window: int,
    decay: float,
    pairs: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    """Contexts from pairs in per-user chronological order (``users, items (E,)``).

    Returns ``pair_items (E, window)``, ``pair_weights (E, window)``: the items each pair's
    user had before it, most recent first (pad ``n_items``), weights ``decay^k``
    normalised per row (all 0 for a user's first pair; both None without ``pairs``);
    ``user_items (U, window)``, ``user_weights (U, window)``: the same for each user's
    next, unseen item. (The block keeps the users' tables and reads a training pair's
    context from its user's sequence when a step asks: :class:`TransitionBlock`.)
    """
    order, indptr = csr_order(users, n_users)
    sorted_users, sorted_items = users[order], items[order]
    starts, counts = indptr[:-1], np.diff(indptr)
    position = np.arange(len(order)) - starts[sorted_users]  # t: the pair's rank in time
    k = np.arange(window)
    table = context_weights(window, decay)

    def gather(end: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``window`` items before sorted index ``end`` (exclusive), of which
        ``available`` exist."""
        valid = k[None, :] < available[:, None]
        index = np.clip(end[:, None] - 1 - k[None, :], 0, max(len(order) - 1, 0))
        picked = np.where(valid, sorted_items[index] if len(order) else n_items, n_items)
        return picked.astype(np.int64), table[np.minimum(available, window)]

    user_items, user_weights = gather(starts + counts, counts)
    if not pairs:
        return None, None, user_items, user_weights
    pair_items, pair_weights = gather(np.arange(len(order)), position)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return pair_items[inverse], pair_weights[inverse], user_items, user_weights


class TransitionBlock(nn.Module):
    """``P``/``Q`` item tables of width ``dim`` and the contexts that index them."""

    def __init__(
        self, graph: TrainingGraph, dim: int, window: int, decay: float, sparse: bool = False
    ) -> None:
        super().__init__()
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.sparse = sparse  # training reads rows with sparse gradients (sparse_updates)
        self.window, self.decay = window, decay
        # row n_items: the padding "item" of short contexts (masked like a cold item)
        self.source = nn.Embedding(graph.n_items + 1, dim)
        self.target = nn.Embedding(graph.n_items, dim)
        nn.init.xavier_uniform_(self.target.weight)  # this order: runs stay reproducible
        nn.init.xavier_uniform_(self.source.weight)
        warm = torch.cat([warm_mask(graph), torch.zeros(1)])  # (I + 1,): the pad is never warm
        self.register_buffer("warm", warm, persistent=False)
        self._set_contexts(graph)

    def _set_contexts(self, graph: TrainingGraph, pairs: bool = True) -> None:
        """The contexts of ``graph``'s users and, with ``pairs``, what a training pair's
        is read from (:meth:`pair_contexts`): the pairs' items in per-user order, and
        each pair's place in it, found by its ``user·I + item`` key. A ``(pairs, window)``
        table of every context was a 1M-item run's largest build (2 GB kept, 6 GB at once)."""
        *_, user_items, user_weights = preceding_items(
            graph.train_users, graph.train_items, graph.n_users, graph.n_items,
            self.window, self.decay, pairs=False,
        )  # fmt: skip
        tables = [("user_items", user_items), ("user_weights", user_weights)]
        if pairs:
            users, items = graph.train_users, graph.train_items
            order, starts = csr_order(users, self.n_users)  # per user, in time
            keys = users.astype(np.int64) * self.n_items + items
            by_key = np.argsort(keys, kind="stable")
            at = np.empty_like(order)
            at[order] = np.arange(len(order))  # each pair's place in its user's sequence
            end = at[by_key]
            tables += [
                ("pair_keys", keys[by_key]),
                ("pair_end", end),  # (E,): the context ends just before this place
                ("pair_count", np.minimum(end - starts[users[by_key]], self.window)),
                ("history_items", items[order].astype(np.int64)),  # (E,)
                ("context_weights", context_weights(self.window, self.decay)),
            ]
        for name, array in tables:
            tensor = torch.as_tensor(array)
            if hasattr(self, name):
                tensor = tensor.to(getattr(self, name).device)
                setattr(self, name, tensor)
            else:
                self.register_buffer(name, tensor, persistent=False)

    def pair_contexts(self, at: Tensor) -> tuple[Tensor, Tensor]:
        """The contexts of the training pairs at ``at (B,)`` (places in ``pair_keys``):
        items ``(B, window)``, most recent first (pad ``n_items``), and their weights
        ``(B, window)`` — rows of :func:`preceding_items`' pair tables."""
        end, count = self.pair_end[at], self.pair_count[at]  # (B,) each
        k = torch.arange(self.window, device=at.device)
        valid = k < count[:, None]  # (B, window)
        index = (end[:, None] - 1 - k).clamp(min=0)
        items = torch.where(valid, self.history_items[index], self.n_items)
        return items, self.context_weights[count]

    def use_history(self, users: np.ndarray, items: np.ndarray) -> None:
        """Score users from these pairs' histories (train + valid when scoring test, per-user
        chronological order); which items count as warm stays the training graph's. The
        training pairs' contexts stay as trained: scoring reads the users' only."""
        self._set_contexts(TrainingGraph(self.n_users, self.n_items, users, items), pairs=False)

    def _pool(self, items: Tensor, weights: Tensor) -> Tensor:
        """items, weights ``(N, window)`` → ``(N, dim)``: Σ_k w_k P[j_k] (rows of warm
        items only)."""
        # a weighted bag sum never materialises (N, window, dim): about 3× faster forward
        # + backward than gather, mask and sum at window 20 (embedding_bag), and its
        # backward ~6× faster again through scipy
        return weighted_bag_sum(items, self.source.weight, weights * self.warm[items], self.sparse)

    def user_vectors(self) -> Tensor:
        """``(U, dim)``: each user's query for the item after their whole history."""
        return self._pool(self.user_items, self.user_weights)

    def pair_vectors(self, users: Tensor, items: Tensor) -> Tensor:
        """``(B, dim)``: the query of training pairs ``(users, items) (B,)``, from the items
        the user had before each; a pair not in the training graph gets the user's query."""
        at, found = find_sorted(self.pair_keys, users * self.n_items + items)
        pair = self._pool(*self.pair_contexts(at))
        if bool(found.all()):  # training pairs always are: no second pooling on that path
            return pair
        fallback = self._pool(rows(self.user_items, users), rows(self.user_weights, users))
        return torch.where(found[:, None], pair, fallback)

    def source_rows(self) -> Tensor:
        """``(I, dim)``: every item's source row as a context item (what ``_pool`` sums)."""
        items = torch.arange(self.n_items, device=self.warm.device)[:, None]
        return self._pool(items, torch.ones_like(items, dtype=torch.float32))

    def item_vectors(self) -> Tensor:
        """``(I, dim)``: ``Q``, zero for items without training interactions."""
        return self.target.weight * self.warm[:-1, None]

    def item_reader(self) -> Callable[[Tensor], Tensor]:
        """``items (*S)`` → ``(*S, dim)``, their rows of :meth:`item_vectors`: gathered from
        the whole table, computed once per reader; with ``sparse``, each row read alone
        (a sparse gradient)."""
        if not self.sparse:
            table = self.item_vectors()
            return lambda items: rows(table, items)
        return lambda items: rows(self.target.weight, items, True) * self.warm[items][..., None]


def transition_block(
    config: TransitionFields, graph: TrainingGraph, sparse: bool = False
) -> TransitionBlock | None:
    """The configured block, or None when ``transition_dim`` is 0."""
    if config.transition_dim == 0:
        return None
    return TransitionBlock(
        graph, config.transition_dim, config.transition_window, config.transition_decay, sparse
    )


def with_transition(
    block: TransitionBlock | None, users: Tensor, items: Tensor
) -> tuple[Tensor, Tensor]:
    """Scoring: ``[users ; t_u]``, ``[items ; Q]`` (unchanged without a block)."""
    if block is None:
        return users, items
    return torch.cat([users, block.user_vectors()], 1), torch.cat([items, block.item_vectors()], 1)


def transition_rows(
    block: TransitionBlock, batch: dict[str, Tensor], neg_items: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Training: the block's rows of the batch's pairs, ``t_u``, ``t_pos (B, d)``, and of
    ``neg_items (*S)`` (None: none), ``t_neg (*S, d)``."""
    users, items = batch["users"], batch["pos_items"]
    t_u, item_rows = block.pair_vectors(users, items), block.item_reader()
    if neg_items is None:
        return t_u, item_rows(items), None
    # positives and negatives gathered together: one scatter backward
    wanted = torch.cat([items, neg_items.flatten()])  # (B + B·N,)
    t_pos, t_neg = item_rows(wanted).split([len(items), neg_items.numel()])
    return t_u, t_pos, t_neg.view(*neg_items.shape, -1)


def batch_with_transition(
    block: TransitionBlock | None,
    batch: dict[str, Tensor],
    user: Tensor,
    pos: Tensor,
    neg: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor]]:
    """Training: the batch's final vectors ``user, pos (B, D)``, ``neg (B, N, D)`` or
    ``(B, D)`` (or None) with the transition columns appended, and the block's rows to
    regularise (none without a block)."""
    if block is None:
        return user, pos, neg, []
    neg_items = None
    if neg is not None:
        neg_items = batch["neg_items"] if neg.dim() == 3 else batch["neg_items"][:, 0]
    t_u, t_pos, t_neg = transition_rows(block, batch, neg_items)
    user, pos = torch.cat([user, t_u], -1), torch.cat([pos, t_pos], -1)
    if t_neg is None:
        return user, pos, neg, [t_u, t_pos]
    neg = torch.cat([neg, t_neg], -1)
    return user, pos, neg, [t_u, t_pos, t_neg.reshape(-1, t_neg.shape[-1])]


def transition_history(block: TransitionBlock | None, users: np.ndarray, items: np.ndarray) -> bool:
    """A model's ``use_history`` for the block alone: True when it moved the users."""
    if block is None:
        return False
    block.use_history(users, items)
    return True


def add_transition_segment(
    segments: list[dict],
    arrays: dict[str, np.ndarray],
    block: TransitionBlock | None,
    start: int,
) -> int:
    """Append the block's part of an anonymous user's query (``RUN/history_query/``, see
    :mod:`recsys.serve.history`) to ``segments`` / ``arrays``: its columns from ``start``
    pool the history's source rows as training does (none for items added after
    training). Returns the end of its columns (``start`` without a block)."""
    if block is None:
        return start
    with torch.no_grad():
        arrays["source"] = block.source_rows().cpu().numpy()
    end = start + block.source.embedding_dim
    segments.append(
        {
            "columns": [start, end],
            "pool": "table",
            "table": "source",
            "decay": block.decay,
            "window": block.window,
        }
    )
    return end
