"""The DAS model: :class:`DualAlignedSemanticIDs` (see :mod:`recsys.models.das` for what
it computes). Its inputs, towers, loss terms and serving export live beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys.models.base import (
    Recommender,
    TrainingGraph,
    find_sorted,
    register_model,
    rows,
    warm_mask,
)
from recsys.models.content import popularity_gbdt, popularity_regressor, raw_feature_matrix
from recsys.models.das import export
from recsys.models.das.combination import (
    AddCombination,
    BatchVectors,
    Combination,
    ConcatCombination,
)
from recsys.models.das.config import DASConfig
from recsys.models.das.history import draw_history, history_ranges
from recsys.models.das.inputs import (
    history_means,
    history_pooling,
    item_inputs,
    neighbor_csr,
    standardized_log,
    user_inputs,
)
from recsys.models.das.losses import (
    aligned_pairs,
    alignment_losses,
    contrastive,
    cooc_loss,
    debias_losses,
    recommendation_loss,
    sample_neighbor,
    weighted_total,
)
from recsys.models.das.towers import InputTower
from recsys.models.das.vectors import ConcatVectors, append_column
from recsys.models.graph import sparse_matmul, sparse_rows_matmul
from recsys.models.quantizer import assign_semantic_ids, codebook_stats
from recsys.models.sampling import expand_ranges
from recsys.models.semantic import GraphPropagation, semantic_id_table
from recsys.models.transition import transition_block, transition_history


@register_model("das", DASConfig)
class DualAlignedSemanticIDs(Recommender):
    needs_item_features = True
    needs_user_features = True

    def __init__(self, config: DASConfig, graph: TrainingGraph) -> None:
        super().__init__()
        if graph.item_features is None:
            raise ValueError("das needs item features")
        self.config = config
        self.n_users, self.n_items = graph.n_users, graph.n_items
        d_int = config.interest_dim
        self.concat = config.semantic_combination == "concat"
        self.combination: Combination = ConcatCombination() if self.concat else AddCombination()
        content_space = config.semantic_input == "content"
        self.item_transforms, item_blocks = item_inputs(config, graph)
        self.item_blocks = item_blocks  # frozen inputs, kept to rebuild user histories
        self.features, self.features_config = graph.item_features, graph.features_config
        # The semantic side's width: the content's own in content space.
        sem_dim = item_blocks["content"][0].shape[1] if content_space else d_int
        tower_codes = config.code_embeddings and not self.concat
        self.item_tower = InputTower(
            item_blocks,
            None if content_space else config.item_fusion,
            config.item_quantizer,
            sem_dim,
            tower_codes,
        )
        self.user_tower = None
        if config.dual:
            self.user_tower = InputTower(
                user_inputs(config, graph, item_blocks),
                None if content_space else config.user_fusion,
                config.user_quantizer,
                sem_dim,
                tower_codes,
            )
        self.pool_history = self.concat and config.user_semantic == "history"
        self.collab_history = self.concat and config.user_history_weight > 0
        # either side pooling the history: test scoring refreshes the pooling with valid
        self.history_pooled = self.pool_history or self.collab_history
        if self.history_pooled:
            self.register_buffer("history_pool", None, persistent=False)
            self.register_buffer("history_keys", None, persistent=False)
            self._set_history_pool(history_pooling(graph, config.history_decay))
        # concat only (validated)
        self.transition = transition_block(config, graph, sparse=config.sparse_updates)
        # concat: the collaborative item embedding holds the semantic ID's code embeddings
        self.item_code_emb = None
        if self.concat and config.code_embeddings:
            self.item_code_emb = nn.ModuleList(
                nn.Embedding(config.item_quantizer.codebook_size, config.dim)
                for _ in range(config.item_quantizer.levels)
            )
            for emb in self.item_code_emb:
                nn.init.xavier_uniform_(emb.weight)
            # TIGER's disambiguating suffix, as the two-stage model embeds it (zeros first:
            # colliding items start shared), for warm items only: a cold item's suffix
            # says nothing learnable about it
            self.item_suffix_emb = nn.Embedding(graph.n_items, config.dim)
            nn.init.zeros_(self.item_suffix_emb.weight)
            self.register_buffer("warm_items", warm_mask(graph))
            self._suffix_cache: tuple[Tensor, Tensor] | None = None
        # InfoNCE compares semantic and collaborative interest vectors: project when the
        # semantic side lives in another space.
        self.align_item: nn.Module = nn.Identity()
        self.align_user: nn.Module = nn.Identity()
        if sem_dim != d_int:
            self.align_item = nn.Linear(sem_dim, d_int, bias=False)
            self.align_user = nn.Linear(sem_dim, d_int, bias=False)
        self.user = nn.Embedding(graph.n_users, config.dim)
        self.item = nn.Embedding(graph.n_items, config.dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.propagation = GraphPropagation(graph, config.layers)
        self.register_buffer("warm", warm_mask(graph) * config.item_id_weight)
        # scoring only: κ on the semantic half of items without training interactions
        cold = 1.0 - warm_mask(graph)
        scale = 1.0 + (config.cold_semantic_weight - 1.0) * cold
        self.register_buffer("item_semantic_scale", scale, persistent=False)
        self._item_counts = graph.item_counts()  # the popularity term's regression target
        self.content_popularity = None  # popularity_source content: fixed, fit once
        if config.popularity_weight > 0 and config.popularity_source == "content":
            raw = raw_feature_matrix(graph.item_features)
            self.content_popularity = popularity_gbdt(raw, self._item_counts)
            predicted = torch.as_tensor(self.content_popularity.predict(raw), dtype=torch.float32)
            self.register_buffer("content_popularity_column", predicted, persistent=False)
        self.register_buffer("item_pop", standardized_log(graph.item_counts()))
        self.register_buffer("user_pop", standardized_log(graph.user_counts()))
        self.pop_head = nn.Linear(max(config.pop_dim, 1), 1)
        u_ptr, u_items = neighbor_csr(graph.train_users, graph.train_items, graph.n_users)
        i_ptr, i_users = neighbor_csr(graph.train_items, graph.train_users, graph.n_items)
        for name, t in (
            ("u_ptr", u_ptr),
            ("u_items", u_items),
            ("i_ptr", i_ptr),
            ("i_users", i_users),
        ):
            self.register_buffer(name, t, persistent=False)

    def sparse_parameters(self) -> list[nn.Parameter]:
        if not self.config.sparse_updates:
            return []
        tables = [self.user.weight, self.item.weight]
        if self.item_code_emb is not None:
            tables.append(self.item_suffix_emb.weight)
        block = [] if self.transition is None else list(self.transition.parameters())
        return [*tables, *block]

    def on_train_epoch_start(self, epoch: int) -> None:
        freeze_at = self.config.freeze_sids_epoch
        if freeze_at is None or epoch < freeze_at or bool(self.item_tower.frozen):
            return
        for tower in (self.item_tower, self.user_tower):
            if tower is not None:
                tower.freeze()

    @torch.no_grad()
    def after_epoch_steps(self) -> dict[str, Tensor]:
        if not self.config.revive_codes:
            return {}
        towers = {"item_tower": self.item_tower, "user_tower": self.user_tower}
        before = {
            f"{name}.{p_name}": p.detach().clone()
            for name, tower in towers.items()
            if tower is not None
            for p_name, p in tower.named_parameters()
        }
        self._revived = sum(t.revive_unused_codes() for t in towers.values() if t is not None)
        params = dict(self.named_parameters())
        edited = {name: params[name].detach() != old for name, old in before.items()}
        return {name: mask for name, mask in edited.items() if bool(mask.any())}

    def use_history(self, users: np.ndarray, items: np.ndarray) -> bool:
        """Recompute the user tower's history inputs from these pairs (train + valid when
        scoring test); codes of users may change accordingly (once frozen, encoded by
        the frozen tower)."""
        graph = TrainingGraph(self.n_users, self.n_items, users, items)
        if self.history_pooled:
            pooling = history_pooling(graph, self.config.history_decay)
            self._set_history_pool(pooling.to(self.history_pool.device))
        moved = transition_history(self.transition, users, items) or self.history_pooled
        if self.user_tower is None:
            return moved
        self.user_tower.set_inputs(
            history_means(self.item_blocks, graph, self.config.history_decay)
        )
        return True

    # ---------------------------------------------------------------- representations
    def _collaborative_item_ego(self, item_out) -> Tensor:
        """concat mode: ``(I, D)`` layer-0 collaborative item rows (warm items' ID rows,
        per-level code embeddings and, for warm items, the suffix embedding)."""
        ego = self.item.weight * self.warm[:, None]
        if self.item_code_emb is not None:  # rows(): the scatter backward through scipy
            for level, emb in enumerate(self.item_code_emb):
                ego = ego + rows(emb.weight, item_out.codes[:, level])
            suffix = self._suffixes(item_out.codes)
            ego = ego + rows(self.item_suffix_emb.weight, suffix) * self.warm_items[:, None]
        return ego

    def _suffixes(self, codes: Tensor) -> Tensor:
        """codes ``(I, L)`` → ``(I,)``: the disambiguating last column of the items'
        semantic IDs, recomputed only when the codes change (frozen IDs: once per run;
        the row-wise unique behind it was ~7% of a Beauty training step)."""
        cached = self._suffix_cache
        if cached is None or cached[0].device != codes.device or not torch.equal(cached[0], codes):
            suffix = assign_semantic_ids(codes)[:, -1].to(codes.device)
            self._suffix_cache = cached = (codes.detach().clone(), suffix)
        return cached[1]

    def _concat_vectors(
        self,
        item_out,
        user_out,
        users: Tensor | None = None,
        items: Tensor | None = None,
        drawn_pool: Tensor | None = None,
    ) -> ConcatVectors:
        """concat mode: final users and items, collaborative users, item ego and the
        users' pooled collaborative history; the user tables hold the rows of ``users``
        (ascending distinct indices; None: every user), so that a training step pools
        only its batch's histories. With ``items`` (ascending, distinct, holding every
        item of those users' histories) the item tables hold those rows only
        (``item_out``: the item tower's output on them), propagated over their sampled
        neighbourhood (``fanouts``), whose items alone are encoded; ``drawn_pool (n, m)``,
        the users' drawn histories over those items (``history_fanout``)."""
        if items is None:
            ego, s_i = self._collaborative_item_ego(item_out), item_out.quantized  # (I, ·)
            c_u, c_i = self.propagation(self.user.weight, ego)
            if users is not None:
                c_u = rows(c_u, users)
        else:  # sampled propagation: the step's rows only
            assert users is not None and self.config.fanouts is not None
            sparse, suffixes = self.config.sparse_updates, self._item_suffixes()

            def item_rows(index: Tensor) -> Tensor:
                return self._item_ego_rows(index, self.item_tower(index).codes, suffixes)

            c_u, c_i = self.propagation.sampled(
                lambda index: rows(self.user.weight, index, sparse),
                item_rows,
                users,
                items,
                self.config.fanouts,
            )
            ego = self._item_ego_rows(items, item_out.codes, suffixes)
            s_i = item_out.quantized

        def pooled(x: Tensor) -> Tensor:  # the users' history means of item rows x (I, d)
            if users is None:
                return sparse_matmul(self.history_pool, x)
            if drawn_pool is not None:
                return sparse_matmul(drawn_pool, x)
            return sparse_rows_matmul(self.history_pool, users, x, items)

        c_hist = None
        if self.collab_history:
            c_hist = pooled(c_i)
            c_u = c_u + self.config.user_history_weight * c_hist
        gamma = self.config.semantic_weight
        if self.pool_history:
            s_u = pooled(s_i)
        elif user_out is not None:
            s_u = user_out.quantized if users is None else rows(user_out.quantized, users)
        else:  # item side only: no user semantic vector to pair with s_i
            s_u, s_i = c_u.new_zeros(len(c_u), 0), c_i.new_zeros(len(c_i), 0)
        return ConcatVectors(c_u, gamma * s_u, c_i, s_i, ego, c_hist)

    def _item_suffixes(self) -> Tensor | None:
        """``(I,)``: every item's disambiguating suffix (None without code embeddings)."""
        if self.item_code_emb is None:
            return None
        tower = self.item_tower
        return self._suffixes(tower.frozen_codes if bool(tower.frozen) else tower.codes())

    def _item_ego_rows(self, items: Tensor, codes: Tensor, suffixes: Tensor | None) -> Tensor:
        """Sampled steps: ``(n, D)``, the rows of :meth:`_collaborative_item_ego` for
        ``items (n,)`` with semantic codes ``codes (n, L)`` and every item's ``suffixes``
        (the tables read with sparse gradients under ``sparse_updates``)."""
        sparse = self.config.sparse_updates
        ego = rows(self.item.weight, items, sparse) * self.warm[items, None]
        if self.item_code_emb is not None:
            assert suffixes is not None
            for level, emb in enumerate(self.item_code_emb):
                ego = ego + rows(emb.weight, codes[:, level])
            suffix = rows(self.item_suffix_emb.weight, suffixes[items], sparse)
            ego = ego + suffix * self.warm_items[items, None]
        return ego

    def batch_items(
        self, users: Tensor, pos: Tensor, neg: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Sampled propagation: the items a step reads — its pairs' positives and
        negatives and its ``users``' history items — as ascending distinct ``(m,)``, and
        ``pos``, ``neg`` as positions in it; with ``history_fanout``, the users' drawn
        histories as a sparse pool ``(n, m)`` over those positions (else None: the whole
        histories, :attr:`history_pool`'s rows)."""
        history, drawn = pos[:0], None
        if self.history_pooled:
            keys, fanout = self.history_keys, self.config.history_fanout
            start, count = history_ranges(keys, users, self.n_items)
            if fanout is None:
                history = keys[expand_ranges(start, count)] % self.n_items
            else:
                row, history, weight = draw_history(
                    self.history_pool, keys, start, count, fanout, self.n_items
                )
                drawn = row, weight
        # every read item's position in the step's items, from the one sort
        items, at = torch.unique(torch.cat([pos, neg.flatten(), history]), return_inverse=True)
        pos_at, neg_at, history_at = at.split([len(pos), neg.numel(), len(history)])
        pool = None
        if drawn is not None:
            row, weight = drawn
            index = torch.stack([row, history_at])
            pool = torch.sparse_coo_tensor(index, weight, (len(users), len(items)))
        return items, pos_at, neg_at.view_as(neg), pool

    def _set_history_pool(self, pooling: Tensor) -> None:
        """The users' pooled history ``(U, I)`` and its entries' sorted ``user·I + item``
        keys (coalesced COO is row-major), for looking up a pair's own weight."""
        index = pooling.indices()
        self.history_pool, self.history_keys = pooling, index[0] * self.n_items + index[1]

    def history_target_weights(self, users: Tensor, items: Tensor) -> Tensor:
        """``(B,)``: the weight of each pair's item in its user's pooled history (a row of
        ``history_pool``, summing to 1); 0 where the item is not in that history."""
        values = self.history_pool.values()
        at, found = find_sorted(self.history_keys, users * self.n_items + items)
        return torch.where(found, values[at], values.new_zeros(()))

    def _leave_target_out(
        self,
        vectors: ConcatVectors,
        users: Tensor,
        pos: Tensor,
        target: tuple[Tensor, Tensor] | None = None,
        at: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Training pairs' collaborative and semantic user rows ``(B, D)``, ``(B, d_s)``
        with the pair's item ``pos (B,)`` (its collaborative and semantic rows ``target``,
        when already gathered) taken out of the user's pooled history (``at (B,)``: the
        users' rows in ``vectors``' user tables, when those hold the batch's users only):
        a pooled part ``h = Σ_j w_j x_j`` becomes ``(h − w_i x_i) / (1 − w_i)`` (0 when i
        was the whole history), the other items keeping their recency weights."""
        beta = self.config.user_history_weight
        w = self.history_target_weights(users, pos)[:, None]
        rest = torch.where(w < 1, 1 / (1 - w).clamp(min=1e-12), torch.zeros_like(w))
        if target is None:
            target = rows(vectors.collab_items, pos), rows(vectors.semantic_items, pos)
        c_target, s_target = target

        def change(pooled: Tensor, x: Tensor) -> Tensor:
            """(h − w x) / (1 − w) − h: what leaving the target out adds to h."""
            return (pooled - w * x) * rest - pooled

        at = users if at is None else at
        collab = rows(vectors.collab_users, at)
        if vectors.collab_history is not None:
            collab = collab + beta * change(rows(vectors.collab_history, at), c_target)
        semantic = rows(vectors.semantic_users, at)
        if self.pool_history:  # γ·s_u = Σ_j w_j (γ s_j)
            semantic = semantic + change(semantic, self.config.semantic_weight * s_target)
        return collab, semantic

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items, semantic = self.combination.embeddings(self)
        return self._with_popularity(users, items, semantic)

    def _with_popularity(self, users: Tensor, items: Tensor, semantic: Tensor):
        """``[users ; λ]``, ``[items ; predicted popularity]`` (``semantic (I, d)``: the
        items' semantic vectors) when ``popularity_weight`` is on, else unchanged."""
        if self.config.popularity_weight <= 0:
            return users, items
        if self.content_popularity is not None:
            pop = self.content_popularity_column
        else:
            s = semantic.cpu().numpy()
            pop = torch.as_tensor(self.popularity_ridge(s).predict(s))
        return self._with_prior_weight(users), append_column(items, pop)

    def _with_prior_weight(self, users: Tensor) -> Tensor:
        """``(U, D)`` → ``(U, D + 1)``: λ appended, the weight of the popularity column."""
        return append_column(users, users.new_full((len(users),), self.config.popularity_weight))

    def popularity_ridge(self, semantic: np.ndarray):
        """The content model's popularity regressor (ridge, α = 1, on the warm items'
        standardised log training counts) fitted on the items' semantic vectors
        ``semantic (I, d)`` — their semantic-ID codeword sums."""
        return popularity_regressor(semantic, self._item_counts)

    # ------------------------------------------------------------------------ losses
    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._aux_losses(batch, self.combination.batch(self, batch))

    def _rec_loss(
        self,
        user: list[Tensor],
        pos: list[Tensor],
        neg: list[Tensor],
        pos_items: Tensor,
        neg_items: Tensor,
    ) -> Tensor:
        """user, pos, neg: the batch's final vectors of its pairs and negatives in matching
        parts ``(B, d_k)`` (their concatenations are the scored rows); pos_items,
        neg_items: ``(B,)`` their item indices (for the popularity prior)."""
        if self.config.popularity_in_training:  # [user ; λ] · [item ; predicted pop]
            pop = self.content_popularity_column
            prior = user[0].new_full((len(pos_items), 1), self.config.popularity_weight)
            user = [*user, prior]
            pos = [*pos, pop[pos_items].to(prior)[:, None]]
            neg = [*neg, pop[neg_items].to(prior)[:, None]]
        return recommendation_loss(user, pos, neg)

    def _aux_losses(self, batch: dict[str, Tensor], vectors: BatchVectors) -> dict[str, Tensor]:
        """Alignment, co-occurrence and debias terms on the batch's ``vectors`` (with the
        terms the combination computed) and the weighted total."""
        terms, e_u, e_p = vectors.terms, vectors.e_u, vectors.e_p
        s_u, s_pos, s_items = vectors.s_u, vectors.s_pos, vectors.s_items
        cfg = self.config
        pairs = aligned_pairs(
            batch["users"], batch["pos_items"], e_u, e_p, cfg.align_batch_size, cfg.interest_dim
        )
        nce = contrastive(cfg.temperature)
        zero = e_u.new_zeros(())
        terms["align_dual_loss"], terms["align_self_loss"] = alignment_losses(
            nce, pairs, s_u, s_pos
        )
        terms["cooc_loss"] = zero
        if cfg.weights.cooc:
            terms["cooc_loss"] = cooc_loss(
                nce,
                pairs,
                s_pos,
                s_items,
                lambda u: sample_neighbor(self.u_ptr, self.u_items, u),
                s_u,
                self._aligned_user_semantic if self.user_tower is not None else None,
                lambda i: sample_neighbor(self.i_ptr, self.i_users, i),
            )
        terms["debias_pop_loss"] = zero
        terms["debias_orth_loss"] = zero
        if cfg.pop_dim > 0:
            width = min(cfg.pop_dim, cfg.interest_dim)
            terms["debias_pop_loss"], terms["debias_orth_loss"] = debias_losses(
                self.pop_head, pairs, self.item_pop, self.user_pop, width
            )
        return {"loss": weighted_total(cfg.weights, terms), **terms}

    def _aligned_user_semantic(self, users: Tensor) -> Tensor:
        """``(B, d_int)``: the user tower's semantic vectors of ``users``, projected into
        the interest space."""
        return self.align_user(self.user_tower(users).quantized)

    # ------------------------------------------------------------- semantic-ID health
    def semantic_weight(self) -> float:
        """γ, the weight of the semantic part."""
        return float(self.config.semantic_weight)

    def epoch_metrics(self) -> dict[str, float]:
        codes = self.item_tower.codes()
        stats = codebook_stats(codes, self.config.item_quantizer.codebook_size)
        out = {f"sid_{k}": v for k, v in stats.items() if k != "n_items"}
        # Churn: items whose code tuple changed since the previous epoch's call (code
        # embeddings indexed by codes that keep moving learn slowly).
        previous = getattr(self, "_previous_codes", None)
        if previous is not None and previous.shape == codes.shape:
            out["sid_changed_frac"] = float((previous != codes).any(dim=1).float().mean())
        self._previous_codes = codes.clone()
        if self.config.revive_codes:
            out["sid_revived_codes"] = float(getattr(self, "_revived", 0))
        return out

    def semantic_ids(self) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        out = {
            "items": semantic_id_table(
                self.item_tower.codes(), self.config.item_quantizer.codebook_size
            )
        }
        if self.user_tower is not None:
            out["users"] = semantic_id_table(
                self.user_tower.codes(), self.config.user_quantizer.codebook_size
            )
        return out

    # ------------------------------------------------------------------- serving
    def history_query(self) -> tuple[list[dict], dict[str, np.ndarray]] | None:
        """An anonymous user's query (``RUN/history_query/``): see
        :func:`recsys.models.das.export.history_query`."""
        return export.history_query(self)

    def write_item_encoder(self, folder: Path) -> None:
        """``RUN/item_encoder/``: see :func:`recsys.models.das.export.write_item_encoder`."""
        export.write_item_encoder(self, folder)
