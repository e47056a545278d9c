#!/usr/bin/env python
"""Semantic-ID health of both quantizer variants on a dataset's frozen content.

    python bench/quantizer_health.py --dataset amazon-beauty --levels 3 --codebook-size 256

Prints JSON per variant: per-level utilisation and perplexity, collision rate before
disambiguation, the largest number of items sharing one ID, reconstruction error and fit
time.  The content is the content-only baseline's item matrix (normalised text +
tabular blocks), as the two-stage model quantizes it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from recsys.data.dataset import DataConfig, load_dataset
from recsys.features.pipeline import build_item_features
from recsys.features.presets import default_features
from recsys.models.content import content_item_matrix
from recsys.models.quantizer import QuantizerConfig, build_quantizer, codebook_stats
from recsys.train.runner import feature_cache_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--rqvae-epochs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    ds = load_dataset(DataConfig(dataset=args.dataset))
    features = build_item_features(
        ds.item_table, default_features(args.dataset), cache_dir=feature_cache_dir()
    )
    x = content_item_matrix(features, {}).astype(np.float32)
    out = {"dataset": args.dataset, "items": int(x.shape[0]), "input_dim": int(x.shape[1])}
    for kind in ("rqkmeans", "rqvae"):
        config = QuantizerConfig(
            kind=kind,
            levels=args.levels,
            codebook_size=args.codebook_size,
            epochs=args.rqvae_epochs,
        )
        start = time.perf_counter()
        quantizer = build_quantizer(config).fit(x)
        seconds = time.perf_counter() - start
        codes = quantizer.encode(x)
        stats = codebook_stats(codes, args.codebook_size)
        recon = float(((quantizer.decode(codes).numpy() - x) ** 2).sum(1).mean())
        out[kind] = {**stats, "recon_sq_error": recon, "fit_seconds": round(seconds, 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
