#!/usr/bin/env python
"""Time the frozen feature extractors per 1,000 items (no cache), print JSON.

python bench/feature_extraction.py --dataset amazon-beauty --items 2000
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from recsys.data.dataset import DataConfig, load_dataset
from recsys.features.presets import default_features
from recsys.features.tabular import TabularEncoder
from recsys.features.text import TextEncoder, render_texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    ds = load_dataset(DataConfig(dataset=args.dataset))
    items = ds.item_table.iloc[: args.items].reset_index(drop=True)
    features = default_features(args.dataset)
    out: dict = {"dataset": args.dataset, "items": len(items), "torch_threads": args.threads}
    if features.text is not None:
        encoder = TextEncoder(features.text)
        texts = render_texts(items, features.text.template)
        encoder.encode(texts[:64])  # load the model and warm up outside the timing
        start = time.perf_counter()
        matrix = encoder.encode(texts)
        seconds = time.perf_counter() - start
        out["text"] = {
            "dim": int(matrix.shape[1]),
            "seconds_per_1k_items": seconds / len(items) * 1e3,
        }
    if features.tabular is not None:
        start = time.perf_counter()
        matrix, _ = TabularEncoder(features.tabular).fit(items).encode(items)
        seconds = time.perf_counter() - start
        out["tabular"] = {
            "dim": int(matrix.shape[1]),
            "seconds_per_1k_items": seconds / len(items) * 1e3,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
