"""Residual quantizers (RQ-VAE, RQ-KMeans): codes, semantic IDs, stats, persistence."""

from __future__ import annotations

import copy

import faiss
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recsys.errors import ArtifactError, DataError
from recsys.models.quantizer import (
    RQVAE,
    QuantizerConfig,
    ResidualQuantizer,
    RQKMeans,
    SemanticIDQuantizer,
    assign_semantic_ids,
    build_id_maps,
    build_quantizer,
    codebook_stats,
    load_quantizer,
)

N_CLUSTERS = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny problems run faster (and steadier on shared cores) with one thread."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def mixture() -> np.ndarray:
    """2048 points from 16 well-separated gaussian clusters in 32 dimensions."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(N_CLUSTERS, 32)) * 10.0
    labels = np.arange(2048) % N_CLUSTERS
    return (centers[labels] + rng.normal(size=(2048, 32))).astype(np.float32)


def _rqvae_cfg(**kw) -> QuantizerConfig:
    base = dict(
        kind="rqvae",
        levels=3,
        codebook_size=16,
        code_dim=8,
        hidden_dims=[64],
        epochs=12,
        batch_size=256,
        lr=3e-3,
        dead_code_steps=20,
        seed=0,
    )
    return QuantizerConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def rqvae(mixture) -> RQVAE:
    return RQVAE(_rqvae_cfg()).fit(mixture)


@pytest.fixture(scope="module")
def rqkmeans(mixture) -> RQKMeans:
    return RQKMeans(levels=3, codebook_size=16, seed=0).fit(mixture)


def _recon_errors(model: SemanticIDQuantizer, x: np.ndarray) -> list[float]:
    codes = model.encode(x)
    xt = torch.from_numpy(x)
    return [
        float((model.decode(codes, n) - xt).pow(2).sum(1).mean())
        for n in range(1, model.levels + 1)
    ]


# ------------------------------------------------------------------------ config
def test_config_is_strict_and_kind_checked():
    with pytest.raises(ValidationError):
        QuantizerConfig(kind="rqvae", levelz=3)
    with pytest.raises(ValidationError):
        QuantizerConfig(kind="pq")
    with pytest.raises(ValueError):
        RQVAE(QuantizerConfig(kind="rqkmeans"))
    assert isinstance(build_quantizer(QuantizerConfig(kind="rqkmeans")), RQKMeans)
    cfg = QuantizerConfig()
    assert (cfg.levels, cfg.codebook_size, cfg.code_dim) == (3, 256, 32)


# ------------------------------------------------------------------------ reconstruction
@pytest.mark.parametrize("name", ["rqkmeans", "rqvae"])
def test_reconstruction_error_falls_with_levels(name, mixture, request):
    model = request.getfixturevalue(name)
    errs = _recon_errors(model, mixture)
    assert errs[0] > errs[1] > errs[2], errs
    h = model.history[-1]
    norms = [h[f"residual_norm_l{lv}"] for lv in range(model.levels)]
    assert norms[0] > norms[1] > norms[2], norms
    assert h["recon_error"] == pytest.approx(errs[-1], rel=1e-4)


def test_rqvae_history_and_training_progress(rqvae):
    hist = rqvae.history
    assert len(hist) == rqvae.config.epochs
    for key in (
        "epoch",
        "train_loss",
        "train_recon_loss",
        "train_commitment_loss",
        "utilization_l0",
        "perplexity_l2",
        "collision_rate",
        "max_items_per_id",
        "recon_error",
    ):
        assert key in hist[0]
    assert hist[-1]["train_recon_loss"] < 0.5 * hist[0]["train_recon_loss"]
    assert hist[-1]["train_codebook_loss"] == 0.0  # EMA codebooks


# ------------------------------------------------------------------------ utilisation
@pytest.mark.parametrize("name", ["rqkmeans", "rqvae"])
def test_every_code_used_on_separated_mixture(name, mixture, request):
    model = request.getfixturevalue(name)
    codes = model.encode(mixture)
    stats = codebook_stats(codes, model.codebook_size)
    assert stats["utilization_l0"] == 1.0
    # the 16 clusters map to the 16 level-0 codes one to one
    labels = np.arange(len(mixture)) % N_CLUSTERS
    pairs = {(int(lab), int(c)) for lab, c in zip(labels, codes[:, 0], strict=True)}
    assert len(pairs) == N_CLUSTERS


# ------------------------------------------------------------------------ semantic IDs
def test_assign_semantic_ids_disambiguates_in_item_order():
    codes = torch.tensor([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    sids = assign_semantic_ids(codes)
    assert sids.shape == (6, 3)
    assert torch.equal(sids[:, :2], codes)
    assert sids[:, 2].tolist() == [0, 1, 0, 2, 1, 0]
    assert torch.unique(sids, dim=0).shape[0] == 6
    with pytest.raises(ValueError):
        assign_semantic_ids(codes, max_suffix=2)

    unique = torch.tensor([[0, 1], [1, 0], [1, 1]])
    assert assign_semantic_ids(unique)[:, 2].tolist() == [0, 0, 0]


def test_semantic_ids_unique_and_bijective(mixture):
    # 4 x 4 codes for 2048 items: collisions are guaranteed
    model = RQKMeans(levels=2, codebook_size=4, seed=0, sinkhorn_last_level=False).fit(mixture)
    codes = model.encode(mixture)
    stats = codebook_stats(codes, 4)
    assert stats["collision_rate"] > 0.9 and stats["max_items_per_id"] > 1
    sids = model.semantic_ids(mixture)
    assert torch.unique(sids, dim=0).shape[0] == len(mixture)
    maps = build_id_maps(sids)
    assert len(maps) == len(mixture)
    for item in range(len(mixture)):
        assert maps.item(maps.sid(item)) == item
    named = build_id_maps(sids, item_ids=[f"i{k}" for k in range(len(mixture))])
    assert named.item(sids[5].tolist()) == "i5"
    with pytest.raises(ValueError, match="repeated"):
        build_id_maps(codes)
    # decode ignores the disambiguating column
    assert torch.equal(model.decode(sids), model.decode(codes))


def test_codebook_stats_values():
    codes = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 1]])
    s = codebook_stats(codes, codebook_size=4)
    assert s["utilization_l0"] == 0.5 and s["utilization_l1"] == 0.5
    assert s["perplexity_l0"] == pytest.approx(2.0)
    assert s["perplexity_l1"] == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    assert s["n_unique_ids"] == 3 and s["max_items_per_id"] == 2
    assert s["collision_rate"] == 0.5


# ------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("name", ["rqkmeans", "rqvae"])
def test_save_load_encode_identical(name, mixture, request, tmp_path):
    model = request.getfixturevalue(name)
    path = tmp_path / "sub" / f"{name}.pt"
    model.save(path)
    loaded = load_quantizer(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert loaded.history == model.history
    codes = model.encode(mixture)
    assert torch.equal(loaded.encode(mixture), codes)
    assert torch.equal(loaded.semantic_ids(mixture), model.semantic_ids(mixture))
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    assert torch.equal(type(model).load(path).encode(mixture[:100]), codes[:100])
    other = RQVAE if name == "rqkmeans" else RQKMeans
    with pytest.raises(ArtifactError):
        other.load(path)


def test_encode_is_per_item(rqvae, mixture):
    """Without Sinkhorn at encode time an item's code does not depend on its batch."""
    codes = rqvae.encode(mixture)
    assert torch.equal(rqvae.encode(mixture[100:110]), codes[100:110])
    assert torch.equal(rqvae.encode(mixture[::-1].copy()), codes.flip(0))


def test_bad_inputs(rqkmeans, tmp_path):
    with pytest.raises(DataError):
        rqkmeans.encode(np.zeros((3, 5), dtype=np.float32))
    bad = np.zeros((3, 32), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="row: 1"):
        rqkmeans.encode(bad)
    with pytest.raises(RuntimeError):
        RQKMeans().encode(np.zeros((3, 32), dtype=np.float32))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError):
        load_quantizer(tmp_path / "junk.pt")


# ------------------------------------------------------------------------ determinism
def test_rqvae_same_seed_same_codes(rqvae, mixture):
    again = RQVAE(_rqvae_cfg()).fit(mixture)
    assert torch.equal(again.encode(mixture), rqvae.encode(mixture))
    assert again.history == rqvae.history


def test_rqkmeans_same_seed_same_codes(rqkmeans, mixture):
    again = RQKMeans(levels=3, codebook_size=16, seed=0).fit(mixture)
    assert torch.equal(again.encode(mixture), rqkmeans.encode(mixture))
    assert torch.equal(again.quantizer.codebooks, rqkmeans.quantizer.codebooks)


def test_fit_leaves_global_rng_alone(mixture):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    RQVAE(_rqvae_cfg(epochs=1)).fit(mixture[:512])
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------ quantizer core
def _four_clusters(n: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return centers[torch.arange(n) % 4] + 0.3 * torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("update", ["ema", "grad"])
def test_dead_code_is_reseeded_and_used(update):
    x = _four_clusters()
    steps = 5
    q = ResidualQuantizer(
        2,
        levels=1,
        codebook_size=4,
        codebook_update=update,
        dead_code_steps=steps,
        sinkhorn_last_level=False,
    )
    q.init_codebooks(x)
    book = q.codebooks[0].detach().clone()
    book[3] = torch.tensor([100.0, 100.0])  # far from everything: never chosen
    q.set_codebook(0, book)
    assert 3 not in q.encode(x)[:, 0].tolist()
    opt = torch.optim.SGD(q.parameters(), lr=0.1) if update == "grad" else None

    g = torch.Generator().manual_seed(1)
    q.train()
    for step in range(steps):
        out = q(x[torch.randperm(len(x), generator=g)[:64]])
        if opt is not None:
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        moved = not torch.allclose(q.codebooks[0, 3].detach(), torch.tensor([100.0, 100.0]))
        assert moved == (step == steps - 1), f"step {step}: moved={moved}"
    # re-seeded onto a data point, and now chosen by items
    assert torch.cdist(q.codebooks[0, 3:4].detach(), x).min() < 1e-4
    for _ in range(3):
        q(x)
    counts = torch.bincount(q.encode(x)[:, 0], minlength=4)
    assert (counts > 0).all(), counts.tolist()
    assert int(q.unused_steps.max()) < steps


def test_split_unused_splits_the_most_distorted_code_by_two_means():
    # level 0: code 0 serves two clusters (A: 3 rows, B: 2 rows), code 1 one far row,
    # code 2 is dead
    a = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2]])
    b = torch.tensor([[6.0, 0.0], [6.0, 0.2]])
    x = torch.cat([a, b, torch.tensor([[-50.0, 0.0]])])
    q = ResidualQuantizer(2, levels=2, codebook_size=3, sinkhorn_last_level=False)
    q.init_codebooks(x)
    q.set_codebook(0, torch.tensor([[2.0, 0.0], [-50.0, 0.0], [100.0, 100.0]]))
    moves = q.split_unused(x)
    assert moves[0] == (0, 2, 0)  # code 2 took half of code 0, the only distorted code
    # the larger half (A) keeps code 0; both halves' means, computed by hand
    assert torch.allclose(q.codebooks[0, 0], torch.tensor([0.2 / 3, 0.2 / 3]))
    assert torch.allclose(q.codebooks[0, 2], torch.tensor([6.0, 0.1]))
    assert q.encode(x)[:, 0].tolist() == [0, 0, 0, 2, 2, 1]
    assert all(level == 1 for level, _, _ in moves[1:])


def test_split_unused_first_parts_rows_that_share_a_whole_id():
    # one level: rows 0 and 1 share code 0 (a collision), row 2 has code 1, code 2 is dead
    x = torch.tensor([[1.0, 0.0], [1.5, 0.0], [-5.0, 0.0]])
    q = ResidualQuantizer(2, levels=1, codebook_size=3, sinkhorn_last_level=False)
    q.init_codebooks(x)
    q.set_codebook(0, torch.tensor([[1.2, 0.0], [-5.0, 0.0], [100.0, 100.0]]))
    assert q.split_unused(x) == [(0, 2, 0)]
    assert torch.equal(q.codebooks[0, 2], x[1])  # pinned on the larger-error row
    assert q.encode(x)[:, 0].tolist() == [0, 2, 1]
    assert float(q.ema_count[0, 2]) == pytest.approx(float(q.ema_count[0].mean()), rel=1e-6)
    books = q.codebooks.clone()
    assert q.split_unused(x) == [] and torch.equal(q.codebooks, books)  # all used: no-op


def test_split_unused_uses_every_code_on_every_level():
    z = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    q = ResidualQuantizer(8, levels=3, codebook_size=32, sinkhorn_last_level=False)
    q.init_codebooks(z[:40])  # fitted on a corner of the data: many codes left unused
    before = codebook_stats(q.encode(z), 32)
    moves = q.split_unused(z)
    assert {level for level, _, _ in moves} == {1, 2}  # level 0 is fully used
    after = codebook_stats(q.encode(z), 32)
    for level in range(3):
        assert after[f"utilization_l{level}"] == 1.0
    assert after["collision_rate"] < before["collision_rate"]


def test_sinkhorn_last_level_more_balanced_than_argmin():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(1600, 1, generator=g) * 0.7  # 80% of the items near code 0
    spread = torch.rand(400, 1, generator=g) * 7.0
    x = torch.cat([torch.cat([dense, spread]), torch.zeros(2000, 1)], 1)
    q = ResidualQuantizer(2, levels=1, codebook_size=8, sinkhorn_last_level=True)
    q.init_codebooks(x)
    q.set_codebook(0, torch.stack([torch.arange(8.0), torch.zeros(8)], 1))
    argmin = codebook_stats(q.encode(x), 8)  # encode: always the nearest code
    twin = copy.deepcopy(q)
    q.train()
    twin.train()
    train_codes = q(x).codes  # training-mode forward: Sinkhorn at the last level
    assert torch.equal(train_codes, twin(x).codes)  # deterministic
    sinkhorn = codebook_stats(train_codes, 8)
    assert sinkhorn["perplexity_l0"] > argmin["perplexity_l0"] + 2.0
    assert sinkhorn["max_items_per_id"] < 0.5 * argmin["max_items_per_id"]


def test_straight_through_gradient_reaches_input():
    x = _four_clusters(64)
    q = ResidualQuantizer(2, levels=2, codebook_size=4)
    q.init_codebooks(x)
    q.train()
    z = x.clone().requires_grad_(True)
    w = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    out = q(z)
    assert out.codes.shape == (64, 2) and out.residual_norms.shape == (2,)
    (out.quantized * w).sum().backward()
    assert torch.equal(z.grad, w)  # straight-through: d quantized / dz = identity

    # through an encoder, with the commitment loss too
    enc = torch.nn.Linear(3, 2)
    inp = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = q(enc(inp))
    (out.quantized.pow(2).sum() + out.loss).backward()
    assert inp.grad is not None and inp.grad.abs().sum() > 0
    assert enc.weight.grad is not None and torch.isfinite(enc.weight.grad).all()


def test_grad_codebooks_train_with_rqvae(mixture):
    model = RQVAE(_rqvae_cfg(codebook_update="grad", epochs=3)).fit(mixture[:1024])
    assert isinstance(model.quantizer.codebooks, torch.nn.Parameter)
    assert model.history[-1]["train_codebook_loss"] > 0
    errs = _recon_errors(model, mixture[:1024])
    assert errs[0] > errs[-1]


def test_quantizer_first_training_batch_initialises():
    x = _four_clusters(200)
    q = ResidualQuantizer(2, levels=2, codebook_size=4)
    with pytest.raises(RuntimeError, match="not initialised"):
        q.eval()(x)
    q.train()
    q(x)
    assert bool(q.initialized)
    state = q.state_dict()
    q2 = ResidualQuantizer(2, levels=2, codebook_size=4)
    q2.load_state_dict(state)
    assert torch.equal(q2.encode(x), q.encode(x))
