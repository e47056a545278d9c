"""Every shipped config (configs/**/*.yaml, whatever is added later) resolves, builds its
model and takes one training step.

The data section is replaced by a synthetic graph: interactions of users who prefer one
cluster of items, and frozen item features of the modalities the config would build
(its ``features`` section, else its dataset's preset), with real-sized blocks (a
MiniLM-sized text block) and enough items for every model size as shipped (256-code
codebooks, content PCA to 256).  Nothing is shrunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.features.pipeline import ItemFeatures, ModalityFeatures
from recsys.features.presets import USER_PRESETS, run_features
from recsys.models import TrainingGraph, build_model, model_spec
from recsys.train.config import RunConfig, load_run_config
from recsys.train.datamodule import NegativeSampler, PairBatches
from recsys.train.module import RecommenderModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))

N_USERS, N_ITEMS, PER_USER, CLUSTERS = 120, 300, 15, 6
BLOCK_DIMS = {"text": 384, "tabular": 40, "image": 512}  # MiniLM text, CLIP-sized image
USER_DIM = 30


def synthetic_graph(config: RunConfig, seed: int = 0) -> TrainingGraph:
    """Interactions (each user's pairs in chronological order) and, for models that read
    them, item (and user) features of the config's modalities, cluster-coded."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(N_ITEMS) % CLUSTERS
    users, items = [], []
    for u in range(N_USERS):
        pool = np.flatnonzero(cluster == u % CLUSTERS)
        chosen = rng.choice(pool, size=PER_USER - 2, replace=False)
        chosen = np.concatenate([chosen, rng.choice(N_ITEMS, size=2, replace=False)])
        users += [u] * len(np.unique(chosen))
        items += list(rng.permutation(np.unique(chosen)))
    graph = TrainingGraph(N_USERS, N_ITEMS, np.array(users), np.array(items))
    build = model_spec(config.model.kind).build
    if build.needs_item_features:
        features = run_features(config.features, config.data.dataset)
        blocks = {}
        for modality, dim in BLOCK_DIMS.items():
            if getattr(features, modality) is None:
                continue
            centers = rng.normal(size=(CLUSTERS, dim))
            matrix = centers[cluster] + 0.3 * rng.normal(size=(N_ITEMS, dim))
            if modality == "tabular":  # multi-hot columns plus a few numeric ones
                matrix = (matrix > 0.5).astype(np.float64)
                matrix[:, -4:] = rng.normal(size=(N_ITEMS, 4))
            present = rng.random(N_ITEMS) > 0.05  # a few items lack the modality
            matrix[~present] = 0
            blocks[modality] = ModalityFeatures(matrix.astype(np.float32), present)
        assert blocks, f"{config.name}: no item modality to build"
        graph.item_features = ItemFeatures([f"i{i}" for i in range(N_ITEMS)], blocks)
        graph.features_config = features
    if build.needs_user_features and config.data.dataset in USER_PRESETS:
        side = (rng.random((N_USERS, USER_DIM)) > 0.7).astype(np.float32)
        graph.user_features = (side, np.ones(N_USERS, bool))
    return graph


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_config_builds_and_takes_a_training_step(path):
    config = load_run_config(str(path))
    assert "base" not in config.dump()
    torch.manual_seed(config.seed)
    graph = synthetic_graph(config)
    model = build_model(config.model, graph)
    if not model.trainable:  # popularity, content: scored as built
        user, item = model.embeddings()
        assert user.shape[0] == N_USERS and item.shape[0] == N_ITEMS
        assert torch.isfinite(user).all() and torch.isfinite(item).all()
        return
    tc = config.trainer
    # the trainer's optimiser and order: optimiser, first epoch's hook, a batch, a step
    optimizer = RecommenderModule(
        model, tc.lr, tc.weight_decay, None, None, None, (10,), 1
    ).configure_optimizers()
    model.train()
    model.on_train_epoch_start(0)
    sampler = NegativeSampler(graph.train_users, graph.train_items, N_ITEMS)
    batches = PairBatches(graph.train_users, graph.train_items, sampler, tc.sampling, config.seed)
    batch = next(iter(batches))
    loss = model.loss(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss), float(loss)
    optimizer.zero_grad()
    loss.backward()
    params = dict(model.named_parameters())
    # a lazily updated table's gradient is sparse: its values are the rows the step read
    grads = {
        n: p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        for n, p in params.items()
        if p.grad is not None
    }
    assert all(torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if not torch.isfinite(g).all()
    ]
    moving = {n: params[n].detach().clone() for n, g in grads.items() if g.abs().sum() > 0}
    assert moving, f"{path.name}: no parameter has a non-zero gradient"
    optimizer.step()
    changed = [n for n, before in moving.items() if not torch.equal(params[n].detach(), before)]
    assert changed, f"{path.name}: the optimiser step changed no parameter"
    assert all(torch.isfinite(params[n]).all() for n in changed)


def test_the_glob_finds_the_shipped_configs():
    found = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    assert {"das.yaml", "ablations/das-no-align.yaml", "bench/das-beauty-ratio811.yaml"} <= found
