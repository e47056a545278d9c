import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recsys.features.cache import EncoderFingerprint, FeatureCache
from recsys.features.image import ImageEncoder, ImageEncoderConfig
from recsys.features.pipeline import FeaturesConfig, ItemFeatures, build_item_features
from recsys.features.tabular import TabularConfig
from recsys.features.text import TextEncoderConfig


class FakeTextEncoder:
    """Deterministic 4-d 'embedding' of each text; records every call."""

    dim = 4

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.calls: list[list[str]] = []

    def fingerprint(self) -> EncoderFingerprint:
        return EncoderFingerprint("fake-text", "1", {"scale": self.scale})

    def encode(self, texts):
        self.calls.append(list(texts))
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:4], np.uint8) for t in texts]
        return np.stack(rows).astype(np.float32) * self.scale

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {"item_id": ["a", "b", "c", "d"], "title": ["Red lipstick", "Blue shoes", "", "Tent"]}
    )


CONFIG = FeaturesConfig(text=TextEncoderConfig(template="{title}"))


def test_second_run_reads_from_disk(tmp_path):
    first = FakeTextEncoder()
    f1 = build_item_features(table(), CONFIG, tmp_path, text_encoder=first)
    assert sorted(first.encoded) == ["Blue shoes", "Red lipstick", "Tent"]  # "" never encoded
    second = FakeTextEncoder()
    f2 = build_item_features(table(), CONFIG, tmp_path, text_encoder=second)
    assert second.calls == []
    np.testing.assert_array_equal(f1["text"].matrix, f2["text"].matrix)
    assert f2["text"].present.tolist() == [True, True, False, True]
    folder = FeatureCache(tmp_path, second.fingerprint()).folder
    names = sorted(p.name for p in folder.iterdir())
    # one generation, no temp files
    assert [n.split("-")[0] for n in names] == ["index", "manifest.json", "matrix"]


def test_changing_one_item_recomputes_only_that_item(tmp_path):
    build_item_features(table(), CONFIG, tmp_path, text_encoder=FakeTextEncoder())
    changed = table()
    changed.loc[1, "title"] = "Green shoes"
    enc = FakeTextEncoder()
    out = build_item_features(changed, CONFIG, tmp_path, text_encoder=enc)
    assert enc.calls == [["Green shoes"]]
    fresh = build_item_features(changed, CONFIG, None, text_encoder=FakeTextEncoder())
    np.testing.assert_array_equal(out["text"].matrix, fresh["text"].matrix)


def test_changing_encoder_config_recomputes_everything(tmp_path):
    build_item_features(table(), CONFIG, tmp_path, text_encoder=FakeTextEncoder(1.0))
    enc = FakeTextEncoder(2.0)
    build_item_features(table(), CONFIG, tmp_path, text_encoder=enc)
    assert sorted(enc.encoded) == ["Blue shoes", "Red lipstick", "Tent"]
    # the old config's entries are still there
    again = FakeTextEncoder(1.0)
    build_item_features(table(), CONFIG, tmp_path, text_encoder=again)
    assert again.calls == []


def test_cache_core_dedupes_survives_corruption_and_prunes(tmp_path):
    fp = EncoderFingerprint("x", "1", {"a": 1})
    assert fp.digest == EncoderFingerprint("x", "1", {"a": 1}).digest
    assert fp.digest != EncoderFingerprint("x", "2", {"a": 1}).digest
    cache = FeatureCache(tmp_path, fp)
    seen = []

    def compute(pos):
        seen.append(list(pos))
        return np.ones((len(pos), 2)) * np.array(pos)[:, None]

    out = cache.get_or_compute(["k1", "k2", "k1"], compute)
    assert seen == [[0, 1]] and out.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert len(cache) == 2
    assert cache.prune(["k2"]) == 1 and len(cache) == 1
    (cache.folder / "manifest.json").write_text("{broken")
    out = cache.get_or_compute(["k2"], compute)
    assert seen[-1] == [0]
    assert json.loads((cache.folder / "manifest.json").read_text())["rows"] == 1


class CountingImageEncoder(ImageEncoder):
    def __init__(self, config):
        super().__init__(config)
        self.encoded = []

    def encode(self, paths):
        self.encoded += [str(p) for p in paths]
        return super().encode(paths)


def test_image_cache_recomputes_only_a_changed_file(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for k, name in enumerate(["a", "b", "c"]):
        Image.new("RGB", (20, 20), (40 * k, 0, 0)).save(folder / f"{name}.png")
    items = pd.DataFrame({"item_id": ["a", "b", "c"]})
    image = ImageEncoderConfig(
        image_dir=folder, image_size=16, cnn_widths=[4], progress=False, num_workers=0
    )
    config = FeaturesConfig(image=image)
    enc = CountingImageEncoder(image)
    build_item_features(items, config, tmp_path / "cache", image_encoder=enc)
    assert len(enc.encoded) == 3
    enc = CountingImageEncoder(image)
    build_item_features(items, config, tmp_path / "cache", image_encoder=enc)
    assert enc.encoded == []
    Image.new("RGB", (20, 20), (0, 200, 0)).save(folder / "b.png")
    enc = CountingImageEncoder(image)
    build_item_features(items, config, tmp_path / "cache", image_encoder=enc)
    assert enc.encoded == [str(folder / "b.png")]
    bigger = image.model_copy(update={"image_size": 24})
    enc = CountingImageEncoder(bigger)
    build_item_features(items, FeaturesConfig(image=bigger), tmp_path / "cache", image_encoder=enc)
    assert len(enc.encoded) == 3


def test_pipeline_alignment_masks_and_save_load(tmp_path):
    items = table()
    items["genres"] = ["a|b", None, None, "b"]
    items["price"] = [1.0, 2.0, None, None]
    config = FeaturesConfig(
        text=TextEncoderConfig(template="{title}"),
        tabular=TabularConfig(multi_valued=["genres"], numeric=["price"]),
    )
    feats = build_item_features(items, config, text_encoder=FakeTextEncoder())
    assert set(feats) == {"text", "tabular"} and feats.item_ids == ["a", "b", "c", "d"]
    assert feats.dims == {"text": 4, "tabular": 4}
    assert feats["tabular"].present.tolist() == [True, True, False, True]
    assert feats["text"].present.tolist() == [True, True, False, True]
    feats.save(tmp_path / "feats.npz")
    loaded = ItemFeatures.load(tmp_path / "feats.npz")
    assert loaded.item_ids == feats.item_ids and loaded.columns == feats.columns
    for m in feats:
        np.testing.assert_array_equal(loaded[m].matrix, feats[m].matrix)
        np.testing.assert_array_equal(loaded[m].present, feats[m].present)
    batch = loaded.to_torch([0, 2])
    assert batch["text"][0].shape == (2, 4) and batch["text"][1].tolist() == [True, False]


def test_pipeline_rejects_duplicate_ids():
    from recsys.errors import DataError

    items = pd.DataFrame({"item_id": ["a", "b", "a"], "title": ["x", "y", "z"]})
    with pytest.raises(DataError, match=r"repeats 'a' at row 2"):
        build_item_features(items, CONFIG, text_encoder=FakeTextEncoder())
