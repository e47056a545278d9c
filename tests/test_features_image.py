import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from recsys.errors import ConfigError, DataError
from recsys.features.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConvBackbone,
    ImageEncoder,
    ImageEncoderConfig,
    build_image_features,
    load_precomputed,
    preprocess_image,
    timm_available,
)

SMALL = {"image_size": 32, "cnn_widths": [8, 16], "progress": False, "num_workers": 0}


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k, name in enumerate(names):
        pixels = rng.integers(0, 256, size=(30 + 5 * k, 40, 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        if k == 1:
            img = img.convert("RGBA")
        if k == 2:
            img = img.convert("P")
        path = folder / f"{name}.png"
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def table(tmp_path):
    paths = write_images(tmp_path / "img", ["i0", "i1", "i2", "i3"])
    return pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3"], "image": [str(p) for p in paths]})


def test_preprocess_solid_color_matches_manual_normalisation():
    img = Image.new("RGB", (50, 20), (255, 0, 128))
    arr = preprocess_image(img, image_size=16)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(arr[:, 8, 8], expected, atol=1e-2)


def test_encode_with_random_cnn(table):
    config = ImageEncoderConfig(path_column="image", **SMALL)
    matrix, present = build_image_features(table, config)
    assert matrix.shape == (4, 16) and matrix.dtype == np.float32
    assert present.all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert np.abs(matrix[0] - matrix[1]).max() > 1e-4
    again, _ = build_image_features(table, config)  # same seed → same random backbone
    np.testing.assert_allclose(matrix, again, atol=1e-6)


def test_image_dir_and_missing_file_policy(tmp_path, caplog):
    write_images(tmp_path / "dir", ["a", "b"])
    items = pd.DataFrame({"item_id": ["a", "zz", "b"]})
    config = ImageEncoderConfig(image_dir=tmp_path / "dir", **SMALL)
    with caplog.at_level(logging.WARNING):
        matrix, present = build_image_features(items, config)
    assert present.tolist() == [True, False, True]
    assert not matrix[1].any()
    assert "1 of 3 items" in caplog.text and "'zz'" in caplog.text

    strict = ImageEncoderConfig(image_dir=tmp_path / "dir", on_missing="error", **SMALL)
    with pytest.raises(DataError, match=r"item 'zz'.*zz\.\{"):
        build_image_features(items, strict)


def test_missing_and_corrupt_files_in_path_column(table, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    table.loc[1, "image"] = str(tmp_path / "nope.jpg")
    table.loc[2, "image"] = str(tmp_path / "broken.png")
    table.loc[3, "image"] = None  # no image declared: missing, never an error
    matrix, present = build_image_features(table, ImageEncoderConfig(path_column="image", **SMALL))
    assert present.tolist() == [True, False, False, False]
    assert not matrix[1:].any()

    strict = ImageEncoderConfig(path_column="image", on_missing="error", **SMALL)
    with pytest.raises(DataError) as err:
        build_image_features(table, strict)
    assert "'i1'" in str(err.value) and "nope.jpg" in str(err.value)


def test_precomputed_matrix(tmp_path):
    items = pd.DataFrame({"item_id": ["a", "b", "c"]})
    feats = np.arange(12, dtype=np.float64).reshape(3, 4)
    feats[1] = 0.0
    np.save(tmp_path / "image_feat.npy", feats)
    config = ImageEncoderConfig(precomputed=tmp_path / "image_feat.npy")
    matrix, present = build_image_features(items, config)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, feats.astype(np.float32))
    assert present.tolist() == [True, False, True]

    np.save(tmp_path / "short.npy", feats[:2])
    with pytest.raises(DataError, match=r"short\.npy.*2 rows.*3 items"):
        build_image_features(items, ImageEncoderConfig(precomputed=tmp_path / "short.npy"))
    with pytest.raises(DataError, match="not found"):
        load_precomputed(tmp_path / "absent.npy", 3)


def test_backbone_weights_from_local_state_dict(table, tmp_path):
    torch.manual_seed(123)
    trained = ConvBackbone([8, 16])
    torch.save(trained.state_dict(), tmp_path / "cnn.pt")
    config = ImageEncoderConfig(path_column="image", weights=tmp_path / "cnn.pt", **SMALL)
    paths = table["image"].tolist()
    loaded = ImageEncoder(config).encode(paths)
    reference = ImageEncoder(config, backbone=trained.eval()).encode(paths)
    np.testing.assert_allclose(loaded, reference, atol=1e-6)
    random_init = ImageEncoder(config.model_copy(update={"weights": None})).encode(paths)
    assert np.abs(loaded - random_init).max() > 1e-3

    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    bad = config.model_copy(update={"weights": tmp_path / "bad.pt"})
    with pytest.raises(ConfigError, match="lacks"):
        ImageEncoder(bad).encode(paths)


def test_config_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        ImageEncoderConfig()
    with pytest.raises(ValueError, match="exactly one"):
        ImageEncoderConfig(path_column="image", precomputed=tmp_path / "x.npy")


@pytest.mark.skipif(timm_available(), reason="timm imports here")
def test_timm_backbone_without_timm_is_a_clear_error(tmp_path, table):
    (tmp_path / "w.pt").write_bytes(b"")
    config = ImageEncoderConfig(
        path_column="image", backbone="timm", timm_model="resnet18", weights=tmp_path / "w.pt"
    )
    with pytest.raises(ConfigError, match="timm"):
        ImageEncoder(config).encode(table["image"].tolist())
