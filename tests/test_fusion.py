import pytest
import torch

from recsys.models.fusion import FusionConfig, ModalityFusion, modality_dropout_mask

DIMS = {"text": 6, "image": 5, "tabular": 3}


def batch(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        m: (torch.randn(b, d, generator=g), torch.ones(b, dtype=torch.bool))
        for m, d in DIMS.items()
    }


def test_output_shapes():
    torch.manual_seed(0)
    model = ModalityFusion(DIMS, FusionConfig(hidden_dim=8, output_dim=7)).eval()
    assert model(batch(5)).shape == (5, 7)
    z, present = model.project(batch(5))
    assert z.shape == (5, 3, 8) and present.shape == (5, 3)
    partial = {"text": batch(5)["text"]}  # image and tabular absent → missing for all
    assert model(partial).shape == (5, 7)


def test_missing_mask_uses_learned_missing_embedding():
    torch.manual_seed(0)
    model = ModalityFusion(DIMS, FusionConfig(hidden_dim=8, output_dim=4)).eval()
    inputs = batch(3)
    x, mask = inputs["image"]
    mask = torch.tensor([True, False, True])
    inputs["image"] = (x, mask)
    z, _ = model.project(inputs)
    missing = model.missing["image"]
    assert missing.abs().sum() > 0  # a learned vector, not zeros
    torch.testing.assert_close(z[1, 1], missing.detach())
    assert not torch.allclose(z[0, 1], missing.detach())

    out = model(inputs)
    garbage = x.clone()
    garbage[1] = float("nan")  # whatever stands in a masked row has no effect
    torch.testing.assert_close(model({**inputs, "image": (garbage, mask)}), out)
    with torch.no_grad():
        model.missing["image"].add_(1.0)
    moved = model(inputs)
    assert not torch.allclose(moved[1], out[1])
    torch.testing.assert_close(moved[[0, 2]], out[[0, 2]])


def test_missing_embedding_is_trained():
    model = ModalityFusion(DIMS, FusionConfig(hidden_dim=8, output_dim=4)).train()
    inputs = batch(4)
    inputs["text"] = (inputs["text"][0], torch.tensor([False, True, False, True]))
    model(inputs).pow(2).sum().backward()
    assert model.missing["text"].grad is not None and model.missing["text"].grad.abs().sum() > 0
    assert model.missing["image"].grad is None or model.missing["image"].grad.abs().sum() == 0


def test_modality_dropout_never_drops_all_modalities():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(2000, 3, generator=g) < 0.6
    kept = modality_dropout_mask(present, p=0.9, generator=g)
    assert not (kept & ~present).any()  # never turns a missing modality on
    had_any = present.any(dim=1)
    assert kept[had_any].any(dim=1).all()
    assert not kept[~had_any].any()
    assert (present & ~kept).sum() > 1000  # it does drop
    assert torch.equal(modality_dropout_mask(present, 0.0), present)

    model = ModalityFusion(DIMS, FusionConfig(hidden_dim=8, modality_dropout=0.95)).train()
    _, used = model.project(batch(500))
    assert used.any(dim=1).all() and (~used).any()
    _, used = model.eval().project(batch(500))
    assert used.all()  # no modality dropout at eval


def test_input_validation():
    model = ModalityFusion(DIMS, FusionConfig(hidden_dim=8))
    with pytest.raises(KeyError, match="audio"):
        model({**batch(2), "audio": (torch.zeros(2, 1), torch.ones(2, dtype=torch.bool))})
    bad = batch(2)
    bad["text"] = (torch.zeros(2, 99), bad["text"][1])
    with pytest.raises(ValueError, match="'text'"):
        model(bad)
    with pytest.raises(ValueError):
        FusionConfig(modality_dropout=1.0)


def test_saved_configs_from_before_issue_29_still_load():
    """Item encoders and quantizer files written before the gated fusion and
    sinkhorn_at_encode were removed name their only surviving values."""
    from recsys.models.quantizer import QuantizerConfig

    saved = {"kind": "concat", "hidden_dim": 8}
    assert FusionConfig.from_saved(saved) == FusionConfig(hidden_dim=8)
    with pytest.raises(ValueError):
        FusionConfig.from_saved({"kind": "gated"})
    old = {**QuantizerConfig().model_dump(), "sinkhorn_at_encode": False}
    assert QuantizerConfig.from_saved(old) == QuantizerConfig()
    with pytest.raises(ValueError):
        QuantizerConfig.from_saved({**old, "sinkhorn_at_encode": True})
