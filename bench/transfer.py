#!/usr/bin/env python
"""The shipped default configs, unchanged but for their data section, on every dataset.

    python bench/transfer.py --models das,lightgcn \\
        --data ml-100k:loo,amazon-beauty:ratio-811,movielens-small:loo --train

trains (``--train``; finished runs are kept, ``--skip-finished``) or reads the run folders
``<runs>/transfer-<model>-<dataset>-<split>`` of ``recsys train -c configs/<model>.yaml
data.dataset=<dataset> data.split=<split>`` with one thread each, prints one JSON row per
run and writes the table into the research history (section ``transfer``).  Per row: epochs
run and the best one, the validation interval, valid and test NDCG@10 / Recall@20, the
hand-selected config's valid NDCG@10 where one exists (:data:`HAND_SELECTED`), and the
early-best check of issue 28: a run whose best validation falls in the first 5% of its
epochs fails unless its curve stays within 5% of that best afterwards ("flat").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs_table import doc_for, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MONITOR = "val/ndcg@10"
EARLY_SHARE = 0.05  # best in the first 5% of the epochs run ...
FLAT_TOLERANCE = 0.05  # ... passes only if every later validation is within 5% of it

# Valid NDCG@10 of the hand-selected configs (seed 2020, first phase), copied from the
# research history: (value, run, source file under docs/research/).
HAND_SELECTED = {
    ("das", "ml-100k", "loo"): (0.1239, "abl-das-ml-100k-loo", "21-issue-5-sixteenth-round.md"),
    ("lightgcn", "ml-100k", "loo"): (
        0.1270, "abl-lightgcn-ml-100k-loo", "21-issue-5-sixteenth-round.md"
    ),
    ("das", "amazon-beauty", "ratio-811"): (
        0.0576, "lto-a3-das-beauty-ratio811", "21-issue-5-sixteenth-round.md"
    ),
    ("lightgcn", "amazon-beauty", "ratio-811"): (
        0.0576, "lightgcn-tr64-beauty-ratio811", "21-issue-5-sixteenth-round.md"
    ),
}


def run_name(model: str, dataset: str, split: str) -> str:
    return f"transfer-{model.replace('_', '-')}-{dataset}-{split}"


def train(model: str, dataset: str, split: str, runs: Path) -> None:
    cmd = [
        str(Path(sys.executable).parent / "recsys"), "train", "-c", f"configs/{model}.yaml",
        f"data.dataset={dataset}", f"data.split={split}", f"name={run_name(model, dataset, split)}",
        f"output_dir={runs}", "trainer.num_threads=1", "--skip-finished", "--no-progress",
        "--brief",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def valid_curve(run: Path) -> pd.Series:
    """The monitored valid metric by epoch (0-based), one value per validation."""
    log = pd.read_csv(run / "logs" / "metrics.csv")
    log = log.dropna(subset=[MONITOR]).drop_duplicates("epoch", keep="last")
    return log.set_index("epoch")[MONITOR]


def early_best(best_epoch: int, epochs: int, curve: pd.Series) -> dict:
    """Issue 28's check: the best (1-based ``best_epoch``) in the first 5% of ``epochs`` is a
    failure unless the curve after it stays within 5% of the best."""
    early = best_epoch <= math.ceil(EARLY_SHARE * epochs)
    after = curve[curve.index >= best_epoch]  # validations after the best one
    best = float(curve.max())
    lowest_after = float(after.min()) / best if len(after) else 1.0
    flat = lowest_after >= 1 - FLAT_TOLERANCE
    return {"early": early, "lowest_after_best": round(lowest_after, 3), "ok": not early or flat}


def row(model: str, dataset: str, split: str, runs: Path) -> dict:
    run = runs / run_name(model, dataset, split)
    metrics = json.loads((run / "metrics.json").read_text())
    training = metrics["training"]
    curve = valid_curve(run)
    hand = HAND_SELECTED.get((model, dataset, split))
    valid = metrics["valid"]["ndcg@10"]
    return {
        "run": run.name,
        "model": model,
        "dataset": dataset,
        "split": split,
        "epochs": training["epochs"],
        "best_epoch": training["best_epoch"],
        "validation_interval": training.get("validation_interval", 1),
        "valid_ndcg@10": valid,
        "valid_recall@20": metrics["valid"]["recall@20"],
        "test_ndcg@10": metrics["test"]["ndcg@10"],
        "test_recall@20": metrics["test"]["recall@20"],
        "train_s": training["train_seconds"],
        "hand_selected_valid_ndcg@10": hand[0] if hand else None,
        "hand_selected_run": f"{hand[1]} ({hand[2]})" if hand else None,
        "vs_hand_selected": round(valid / hand[0] - 1, 4) if hand else None,
        **early_best(training["best_epoch"], training["epochs"], curve),
    }


def markdown(rows: list[dict]) -> str:
    head = [
        "model", "dataset", "split", "epochs (best)", "valid every", "valid N@10", "valid R@20",
        "test N@10", "test R@20", "train s", "hand-selected valid N@10", "early-best check",
    ]  # fmt: skip
    lines = [
        "### The default configs, unchanged but for the data section",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        hand = ""
        if r["hand_selected_valid_ndcg@10"] is not None:
            hand = f"{r['hand_selected_valid_ndcg@10']:.4f} ({r['vs_hand_selected']:+.1%})"
        check = "pass" if not r["early"] else ("flat after: pass" if r["ok"] else "**fail**")
        cells = [
            r["model"], r["dataset"], r["split"], f"{r['epochs']} ({r['best_epoch']})",
            str(r["validation_interval"]), f"{r['valid_ndcg@10']:.4f}",
            f"{r['valid_recall@20']:.4f}", f"{r['test_ndcg@10']:.4f}",
            f"{r['test_recall@20']:.4f}", f"{r['train_s']:.0f}", hand,
            f"{check} (lowest after best {r['lowest_after_best']:.2f})",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each row: `recsys train -c configs/<model>.yaml data.dataset=<dataset>"
        " data.split=<split> trainer.num_threads=1`, run folder `runs/transfer-<model>-"
        "<dataset>-<split>`. Hand-selected: the run named in `bench/transfer.py`"
        " (`HAND_SELECTED`), seed 2020, valid of its first phase; the percentage is the"
        " default's difference. Early-best check: best epoch in the first 5% of the epochs"
        " run fails unless every later validation stays within 5% of the best.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="das,lightgcn")
    ap.add_argument("--data", required=True, help="dataset:split,... e.g. ml-100k:loo")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs")
    ap.add_argument("--train", action="store_true", help="train the missing runs first")
    ap.add_argument("--doc", type=Path, help="default: the docs/research/ file holding it")
    ap.add_argument("--section", default="transfer")
    args = ap.parse_args()
    cells = [tuple(d.split(":")) for d in args.data.split(",")]
    rows = []
    for dataset, split in cells:
        for model in args.models.split(","):
            if args.train:
                train(model, dataset, split, args.runs)
            if (args.runs / run_name(model, dataset, split) / "metrics.json").exists():
                rows.append(row(model, dataset, split, args.runs))
    publish(rows, args.doc or doc_for(args.section), args.section, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
